"""Serving the app: on 127.0.0.1 by default, no share tunnel, no analytics, bounded uploads and queue."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
# Gradio puts a Share button under every message with a picture or a clip; it only works on Hugging
# Face Spaces ("Must be on Spaces to share"), so the app hides it.
PAGE_CSS = '#chatbot .message-buttons button[aria-label="Share"] { display: none; }'


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:pass`` -> ("user", "pass"); None stays None."""
    from mmassist.core.errors import ConfigError

    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth must look like user:password (both non-empty)")
    return user, password


def launch_options(*, host: str | None = None, port: int | None = None, auth: str | tuple[str, str] | None = None,
                   upload_limit_mb: float | None = None, quiet: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` with this project's safe defaults."""
    from mmassist.ui.app import DEFAULT_UPLOAD_LIMIT_MB

    limit = DEFAULT_UPLOAD_LIMIT_MB if upload_limit_mb is None else upload_limit_mb
    return {
        "server_name": host or DEFAULT_HOST,
        "server_port": port,
        "auth": parse_auth(auth) if isinstance(auth, str) else auth,
        "share": False,
        "max_file_size": f"{limit:g}mb",
        "ssr_mode": False,  # no Node server next to ours
        "mcp_server": False,
        "enable_monitoring": False,
        "show_error": True,
        "quiet": quiet,
        "css": PAGE_CSS,
    }


def launch(model: str | Path | None = None, *, host: str | None = None, port: int | None = None,
           auth: str | tuple[str, str] | None = None, upload_limit_mb: float | None = None,
           runs_dir: str | Path | None = None, block: bool = True, api: bool = False, api_key: str | None = None,
           media_dir: str | Path | None = None):
    """Build the app and serve it; print the local address. Returns the app (when ``block`` is False).

    :param model: the default model ("starter" or a checkpoint folder).
    :param host: the address to bind (default 127.0.0.1: this machine only).
    :param port: the port (default: 7860, or the next free one after it).
    :param auth: "user:pass" (or a tuple) to require a login.
    :param upload_limit_mb: the largest file a user may upload.
    :param runs_dir: where fine-tunes started in the app go (default runs/).
    :param api: also serve the OpenAI-compatible API (``/v1/...``, :mod:`mmassist.ui.api`) on the same
        address, answering with the app's default model as loaded by the app (one copy in memory).
    :param api_key: require this bearer token on the API.
    :param media_dir: the folder API requests may name local media files in.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmassist.ui.app import DEFAULT_RUNS_DIR, DEFAULT_UPLOAD_LIMIT_MB, build_app

    limit = DEFAULT_UPLOAD_LIMIT_MB if upload_limit_mb is None else upload_limit_mb
    app = build_app(str(model) if model else None, upload_limit_mb=limit, runs_dir=runs_dir or DEFAULT_RUNS_DIR)
    # quiet: Gradio's banner suggests share=True, which mmassist does not offer (no tunnels); say the address
    options = launch_options(host=host, port=port, auth=auth, upload_limit_mb=limit, quiet=True)
    app.launch(prevent_thread_lock=True, **options)
    print(f"mmassist web app at {app.local_url} (Ctrl+C to stop)", flush=True)
    if api:
        add_api(app, api_key=api_key, media_dir=media_dir, max_body_mb=limit)
    if block:
        app.block_thread()
    return app


def add_api(app, *, api_key: str | None = None, media_dir: str | Path | None = None,
            max_body_mb: float | None = None):
    """Serve the OpenAI-compatible API from a launched web app, on its default model (loaded once, shared
    with the app's Chat and Caption tabs); returns the :class:`mmassist.ui.api.ChatService`."""
    from mmassist.ui.api import DEFAULT_MAX_BODY_MB, ChatService, add_routes

    store = app.shared.store
    model = store.get(None)
    service = ChatService({store.key(None): model.assistant}, media_dir=media_dir)
    add_routes(app.server_app, service, api_key=api_key,
               max_body_mb=DEFAULT_MAX_BODY_MB if max_body_mb is None else max_body_mb)
    app.api_service = service
    print(f"OpenAI-compatible API at {app.local_url.rstrip('/')}/v1 (model: {store.key(None)})", flush=True)
    return service

