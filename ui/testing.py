"""Helpers for testing the app: a tiny model trained in seconds, and the app served on a free port.

    folder, model = tiny_model(tmp)                 # captions "a red square", ... exactly
    with serve(build_app(str(model))) as url:
        Client(url).predict({"text": "", "files": [handle_file(folder / "red.png")]}, api_name="/chat")
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any, Iterator

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 20)}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
TINY_IMAGE = {"name": "image/timm", "freeze": True, "config": {"model_name": "test_vit", "image_size": 32}}
TINY_VIDEO = {"name": "video/decord", "freeze": True,
              "config": {"backbone": {"model_name": "test_resnet"}, "image_size": 32, "num_frames": 4,
                         "tokens_per_frame": 1, "num_threads": 1}}


def colour_squares(folder: str | Path, copies: int = 1) -> Path:
    """A captions folder: one plain square per colour (``red.png``...; more with ``copies``) and
    ``captions.jsonl`` saying "a red square"."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(copies):
        for colour, rgb in COLOURS.items():
            name = f"{colour}.png" if i == 0 else f"{colour}{i}.png"
            Image.new("RGB", (32, 32), rgb).save(folder / name)
            rows.append(json.dumps({"file": name, "caption": f"a {colour} square"}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def tiny_caption_config(data: str | Path | None, *, video: bool = True, **training: Any) -> dict[str, Any]:
    """A captioning config small enough to overfit the colour squares in seconds on a CPU.

    With ``video`` the model also takes videos (an untrained path: its captions are not meaningful).
    """
    encoders = {"image": TINY_IMAGE, **({"video": TINY_VIDEO} if video else {})}
    return {
        "encoders": encoders,
        "decoder": {"init": TINY_LLAMA, "tokenizer": "bytes", "max_length": 128},
        "task": {"kind": "caption", "prompt": "Describe."},
        "data": {"train": str(data) if data is not None else None, "validation_fraction": 0.0},
        "generation": {"max_new_tokens": 20},
        "training": {"epochs": 40, "batch_size": 4, "lr": 5e-3, "log_every": 1, "eval_generate": 0, **training},
    }


def train_tiny_model(data: str | Path, output_dir: str | Path, host=None, **training: Any) -> Path:
    """Fine-tune :func:`tiny_caption_config` on ``data``; return the model folder."""
    from mmassist import core

    res = core.finetune(tiny_caption_config(data, **training), output_dir=output_dir, host=host)
    return Path(res.output_dir)


def tiny_model(folder: str | Path, host=None) -> tuple[Path, Path]:
    """The colour squares and a tiny model trained on them, under ``folder``: ``(data, model)``.

    Trained on the first call and reused by later ones (pass the same folder, e.g. pytest's base
    temporary folder, to share one model between test modules)."""
    import torch

    folder = Path(folder)
    data, model = folder / "squares", folder / "model"
    if not (model / "manifest.json").is_file():
        colour_squares(data)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a 64-wide model: more threads only add overhead
        try:
            train_tiny_model(data, model, host=host)
        finally:
            torch.set_num_threads(threads)
    return data, model


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app, **options: Any) -> Iterator[str]:
    """Launch ``app`` in this process on a free local port with the project's launch options;
    yield its address, close it afterwards."""
    from mmassist.ui.server import launch_options

    port = free_port()
    opts = launch_options(port=port, upload_limit_mb=getattr(app, "upload_limit_mb", None), quiet=True, **options)
    app.launch(prevent_thread_lock=True, **opts)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@contextlib.contextmanager
def serve_api(app) -> Iterator[str]:
    """Serve a FastAPI app (:func:`mmassist.ui.api.build_api`) with uvicorn in a thread of this process, on a
    free local port; yield its base URL (``http://127.0.0.1:<port>``), stop it afterwards."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
