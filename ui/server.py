"""Serving the app: on 127.0.0.1 by default, no share tunnel, no analytics, bounded uploads and queue."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"


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
    }


def launch(model: str | Path | None = None, *, host: str | None = None, port: int | None = None,
           auth: str | tuple[str, str] | None = None, upload_limit_mb: float | None = None,
           runs_dir: str | Path | None = None, block: bool = True):
    """Build the app and serve it; print the local address. Returns the app (when ``block`` is False).

    :param model: the default model ("starter" or a checkpoint folder).
    :param host: the address to bind (default 127.0.0.1: this machine only).
    :param port: the port (default: 7860, or the next free one after it).
    :param auth: "user:pass" (or a tuple) to require a login.
    :param upload_limit_mb: the largest file a user may upload.
    :param runs_dir: where fine-tunes started in the app go (default runs/).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmassist.ui.app import DEFAULT_RUNS_DIR, DEFAULT_UPLOAD_LIMIT_MB, build_app

    limit = DEFAULT_UPLOAD_LIMIT_MB if upload_limit_mb is None else upload_limit_mb
    app = build_app(str(model) if model else None, upload_limit_mb=limit, runs_dir=runs_dir or DEFAULT_RUNS_DIR)
    options = launch_options(host=host, port=port, auth=auth, upload_limit_mb=limit)
    app.launch(prevent_thread_lock=not block, **options)
    return app

