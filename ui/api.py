"""An OpenAI-compatible HTTP API: ``GET /v1/models`` and ``POST /v1/chat/completions`` (``mmassist serve``).

Any OpenAI client talks to it (``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...)``). Messages take
string content or content parts: ``text``, ``image_url`` and ``video_url`` (vLLM's convention) with
``data:`` URLs, or local paths under the folder the operator allows (``media_dir``), never a remote fetch;
and a part of any installed plugin's modality (``{"type": "signal", "signal": {"url": "data:..."}}``).
Concurrent requests are generated in batches (:mod:`mmassist.core.runtime.serving`), one scheduler per
model. Every error is OpenAI-shaped JSON (``{"error": {"message", "type", "param", "code"}}``) with its
status, and the server goes on serving.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations (Request)
# at definition time, and they name a class imported inside add_routes.
import base64
import binascii
import dataclasses
import hmac
import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from mmassist.core.errors import MMAssistError, PromptTooLongError
from mmassist.core.runtime.processor import part_kind
from mmassist.core.runtime.serving import BatchScheduler, QueueFullError, usage

DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_MB = 32.0
MAX_TOKENS_LIMIT = 4096
# OpenAI options this server does not implement: refused with a 400 rather than silently ignored.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "audio", "prediction",
               "top_logprobs", "web_search_options", "parallel_tool_calls")


class APIError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_of(e: Exception) -> APIError:
    """A user error (bad media, a prompt too long, a full queue) as its API error; anything else is a 500."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFullError):
        return APIError(503, str(e), type="server_error", code="queue_full")
    if isinstance(e, PromptTooLongError):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, MMAssistError):
        return APIError(400, str(e), param="messages", code="invalid_input")
    return APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")


@dataclasses.dataclass
class ServedModel:
    id: str
    assistant: Any
    scheduler: BatchScheduler
    created: int


class ChatService:
    """The models being served and how a request becomes generation: everything but HTTP.

    :param models: model id -> :class:`mmassist.core.Assistant`.
    :param media_dir: local media paths are allowed only inside this folder (None: no local paths).
    """

    def __init__(self, models: Mapping[str, Any], *, media_dir: str | Path | None = None, max_batch: int = 16,
                 max_queue: int = 64):
        self.models = {name: ServedModel(name, asst, BatchScheduler(asst, max_batch=max_batch, max_queue=max_queue),
                                         int(time.time())) for name, asst in models.items()}
        self.media_dir = Path(media_dir).resolve() if media_dir is not None else None

    def close(self) -> None:
        for m in self.models.values():
            m.scheduler.close()

    def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m.id, "object": "model", "created": m.created,
                                            "owned_by": "mmassist"} for m in self.models.values()]}

    # -- a request ----------------------------------------------------------------------------

    def model(self, name: Any) -> ServedModel:
        if not isinstance(name, str) or name not in self.models:
            raise APIError(404, f"the model {name!r} does not exist; models here: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        return self.models[name]

    def generation(self, body: Mapping[str, Any], served: ServedModel):
        """The request's generation settings over the model's defaults; unsupported options are refused."""
        for key in UNSUPPORTED:
            if body.get(key) not in (None, [], "none"):
                raise APIError(400, f"{key!r} is not supported by this server", param=key, code="unsupported_parameter")
        if body.get("n", 1) != 1:
            raise APIError(400, "n must be 1: this server returns one choice per request", param="n",
                           code="unsupported_parameter")
        if body.get("logprobs"):
            raise APIError(400, "logprobs are not supported by this server", param="logprobs",
                           code="unsupported_parameter")
        fmt = body.get("response_format")
        if fmt is not None and (not isinstance(fmt, Mapping) or fmt.get("type") != "text"):
            raise APIError(400, "only response_format {\"type\": \"text\"} is supported", param="response_format",
                           code="unsupported_parameter")
        for key in ("presence_penalty", "frequency_penalty"):
            if body.get(key) not in (None, 0, 0.0):
                raise APIError(400, f"{key} is not supported; this server has repetition_penalty (> 1 discourages "
                                    "repeats)", param=key, code="unsupported_parameter")
        gen = served.assistant.cfg.generation
        changes: dict[str, Any] = {}
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            changes["max_new_tokens"] = _number(max_tokens, "max_tokens", int, 1, MAX_TOKENS_LIMIT)
        for key, kind, lo, hi in (("temperature", float, 0.0, 2.0), ("top_p", float, 0.0, 1.0),
                                  ("top_k", int, 0, 100_000), ("repetition_penalty", float, 0.5, 2.0)):
            if body.get(key) is not None:
                changes[key] = _number(body[key], key, kind, lo, hi)
        if changes.get("top_p") == 0.0:
            raise APIError(400, "top_p must be above 0", param="top_p")
        if body.get("seed") is not None:
            changes["seed"] = _number(body["seed"], "seed", int, -(2**63), 2**63 - 1)
        stop = body.get("stop")
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else stop
            if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
                raise APIError(400, "stop must be a non-empty string or a list of up to 4 of them", param="stop")
            changes["stop"] = stops
        return dataclasses.replace(gen, **changes)

    def messages(self, raw: Any) -> list[dict[str, Any]]:
        """OpenAI messages with every media part's URL resolved to bytes or an allowed local path."""
        if not isinstance(raw, list) or not raw:
            raise APIError(400, "messages must be a non-empty list", param="messages")
        out = []
        for i, msg in enumerate(raw):
            if not isinstance(msg, Mapping) or "role" not in msg:
                raise APIError(400, f"messages[{i}] must be an object with a role", param=f"messages[{i}]")
            role = msg["role"]
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise APIError(400, f"messages[{i}]: role {role!r} is not supported (system, user, assistant)",
                               param=f"messages[{i}].role")
            content = msg.get("content")
            if content is None:
                content = ""
            if isinstance(content, list):
                content = [self._part(part, f"messages[{i}].content[{j}]") for j, part in enumerate(content)]
            elif not isinstance(content, str):
                raise APIError(400, f"messages[{i}].content must be a string or a list of parts",
                               param=f"messages[{i}].content")
            out.append({"role": role, "content": content})
        return out

    def _part(self, part: Any, where: str) -> dict[str, Any]:
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise APIError(400, f"{where} must be an object with a type", param=where)
        kind = part_kind(part["type"])
        if kind == "text":
            return {"type": "text", "text": str(part.get("text", ""))}
        value = next((part[k] for k in (part["type"], kind) if k in part), None)
        if isinstance(value, Mapping):
            if "data" in value:  # OpenAI's input_audio: {"data": base64, "format": "wav"}
                return {"type": kind, kind: _base64(value["data"], where)}
            value = value.get("url")
        if not isinstance(value, str) or not value:
            raise APIError(400, f"{where}: a {part['type']} part needs a URL ({{\"url\": \"data:...\"}})", param=where)
        return {"type": kind, kind: self._media(value, where)}

    def _media(self, url: str, where: str) -> bytes | str:
        if url.startswith("data:"):
            header, sep, data = url.partition(",")
            if not sep or not header.endswith(";base64"):
                raise APIError(400, f"{where}: a data URL must be base64 (data:<type>;base64,...)", param=where)
            return _base64(data, where)
        if url.startswith(("http://", "https://")):
            raise APIError(400, f"{where}: remote URLs are not fetched by this server; send the file as a data: URL",
                           param=where, code="remote_url")
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        if self.media_dir is None:
            raise APIError(400, f"{where}: local paths are not allowed here (the server has no --media-dir); "
                                "send the file as a data: URL", param=where)
        resolved = (self.media_dir / path).resolve()
        if not resolved.is_relative_to(self.media_dir):
            raise APIError(400, f"{where}: {url!r} is outside the allowed media folder", param=where)
        if not resolved.is_file():
            raise APIError(400, f"{where}: no such file {url!r} in the media folder", param=where)
        return str(resolved)

    def start(self, body: Any):
        """Check a request and queue it: ``(model, request)``; raises :class:`APIError`."""
        if not isinstance(body, Mapping):
            raise APIError(400, "the request body must be a JSON object")
        served = self.model(body.get("model"))
        gen = self.generation(body, served)
        messages = self.messages(body.get("messages"))
        asst = served.assistant
        try:
            conv = asst.processor.conversation(messages)
            encoded = asst.processor.encode(conv, add_generation_prompt=True)
            return served, served.scheduler.submit(encoded, gen)
        except MMAssistError as e:
            raise error_of(e) from None

    def complete(self, body: Mapping[str, Any]) -> dict[str, Any]:
        served, request = self.start(body)
        try:
            text = request.result()
        except Exception as e:
            raise error_of(e) from None
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served.id, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "finish_reason": request.finish_reason, "logprobs": None}],
                "usage": usage([request])}

    def stream(self, body: Mapping[str, Any]) -> Iterator[str]:
        """Server-sent events; the request is checked and its first event awaited before the first line, so
        that an error (bad media...) is still an HTTP error and not a broken stream."""
        served, request = self.start(body)
        events = request.events()
        first = next(events)
        if first[0] == "error":
            raise error_of(first[1])
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        return self._events(served, request, first, events, include_usage)

    def _events(self, served, request, first, events, include_usage: bool) -> Iterator[str]:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": served.id}

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                    **extra}
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for event in itertools.chain([first], events):
            if event[0] == "delta":
                yield chunk({"content": event[1]})
            elif event[0] == "done":
                yield chunk({}, event[1])
            else:  # an error after the first token: say so in the stream, then end it
                yield f"data: {json.dumps(error_of(event[1]).body())}\n\n"
        if include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage([request])})}\n\n"
        yield "data: [DONE]\n\n"


def _number(value: Any, name: str, kind: type, lo: float, hi: float):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise APIError(400, f"{name} must be {'an integer' if kind is int else 'a number'}, not {value!r}", param=name)
    if not lo <= value <= hi:
        raise APIError(400, f"{name}={value} is out of range [{lo}, {hi}]", param=name)
    return kind(value)


def _base64(data: Any, where: str) -> bytes:
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: the data is not valid base64", param=where) from None
    if not raw:
        raise APIError(400, f"{where}: the file is empty", param=where)
    return raw


# -- HTTP ------------------------------------------------------------------------------------------


def add_routes(app, service: ChatService, *, api_key: str | None = None,
               max_body_mb: float = DEFAULT_MAX_BODY_MB) -> None:
    """Add ``/v1/models`` and ``/v1/chat/completions`` to a FastAPI app (a new one, or the web app's)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    limit = int(max_body_mb * 1024 * 1024)

    def answer(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    def authorized(request: Request) -> APIError | None:
        if api_key is None:
            return None
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), api_key.encode())):
            return APIError(401, "a valid API key is required (Authorization: Bearer <key>)",
                            code="invalid_api_key")
        return None

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body is over {max_body_mb:g} MB", code="request_too_large")
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise APIError(413, f"the request body is over {max_body_mb:g} MB", code="request_too_large")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None

    @app.get("/v1/models")
    async def list_models(request: Request):
        error = authorized(request)
        return answer(error) if error else JSONResponse(service.list_models())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        error = authorized(request)
        if error:
            return answer(error)
        try:
            body = await read_json(request)
            if isinstance(body, Mapping) and body.get("stream"):
                events = await run_in_threadpool(service.stream, body)
                # a plain iterator: Starlette reads it in its thread pool, so waiting for tokens does not
                # block the event loop
                return StreamingResponse(events, media_type="text/event-stream")
            return JSONResponse(await run_in_threadpool(service.complete, body))
        except Exception as e:
            return answer(error_of(e))


def build_api(models: Mapping[str, Any], *, api_key: str | None = None, media_dir: str | Path | None = None,
              max_body_mb: float = DEFAULT_MAX_BODY_MB, max_batch: int = 16, max_queue: int = 64):
    """A FastAPI app serving ``models`` (id -> Assistant); ``app.state.service`` is its :class:`ChatService`."""
    from fastapi import FastAPI

    app = FastAPI(title="mmassist", docs_url=None, redoc_url=None, openapi_url=None)
    service = ChatService(models, media_dir=media_dir, max_batch=max_batch, max_queue=max_queue)
    add_routes(app, service, api_key=api_key, max_body_mb=max_body_mb)
    app.state.service = service
    return app


def load_models(names: list[str], host=None) -> dict[str, Any]:
    """``{name: Assistant}`` for model names (``starter``) or folders, each loaded once."""
    from mmassist import core

    host = host or core.Host()
    return {name: core.Assistant.from_pretrained(name, host=host) for name in dict.fromkeys(names)}


def serve(models: list[str], *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key: str | None = None,
          media_dir: str | None = None, max_body_mb: float = DEFAULT_MAX_BODY_MB) -> None:
    """``mmassist serve``: load the models and serve the API until interrupted."""
    import uvicorn

    app = build_api(load_models(models), api_key=api_key, media_dir=media_dir, max_body_mb=max_body_mb)
    print(f"mmassist API on http://{host}:{port}/v1 (models: {', '.join(app.state.service.models)})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
