"""What the reliability tests share: a tiny untrained model, bad files of every kind, and the CLI.

The model is random (no training): the tests check errors, isolation and bookkeeping, not answers.
Its greedy answers still differ from prompt to prompt, which is enough to tell requests apart.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mmassist.ui.testing import TINY_IMAGE, TINY_LLAMA, TINY_VIDEO

MAX_LENGTH = 256
TINY_TEXT = {"name": "text/hf", "config": {"max_length": 32, "init_config": {
    "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64}}}


def tiny_config(**sections: Any) -> dict[str, Any]:
    """A chat model that takes images and videos: test_vit / test_resnet encoders, a 2-layer Llama.

    A new dict each time, with nothing shared with ui.testing's constants: change it freely."""
    return copy.deepcopy({
        "encoders": {"image": TINY_IMAGE, "video": TINY_VIDEO},
        "decoder": {"init": TINY_LLAMA, "tokenizer": "bytes", "max_length": MAX_LENGTH},
        "generation": {"max_new_tokens": 8},
        **sections,
    })


def text_classifier_config(train: str | Path, **data: Any) -> dict[str, Any]:
    """A text-only classifier (no encoder at all): the cheapest config ``core.finetune`` accepts."""
    return {
        "encoders": {},
        "decoder": {"init": {**TINY_LLAMA, "num_hidden_layers": 1}, "tokenizer": "bytes", "max_length": 64},
        "task": {"kind": "classification", "labels": ["negative", "positive"]},
        "data": {"train": str(train), "validation_fraction": 0.0, **data},
        "training": {"max_steps": 1, "batch_size": 2, "eval_generate": 0},
    }


# -- bad images ---------------------------------------------------------------------------------


def png_bytes(size: tuple[int, int] = (32, 32), colour: str = "red") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb's shape
    without its memory (the header is all a decoder reads before it allocates)."""
    data = bytearray(png_bytes((8, 8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 17]))
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def bad_images(folder: Path) -> dict[str, Path]:
    """name -> a file a user might give as an image, each undecodable in its own way."""
    folder.mkdir(parents=True, exist_ok=True)
    good = png_bytes((64, 64))
    files = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "notes.png": b"this is a text file, not a picture\n" * 20,
        "bomb.png": png_declaring(60_000, 60_000),  # 3.6 Gpx: over PIL's hard limit
        "large.png": png_declaring(9_000, 9_000),  # 81 Mpx: under PIL's limit, over the plugin's max_pixels
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


# -- bad videos ---------------------------------------------------------------------------------


def good_video(path: Path, num_frames: int = 16) -> Path:
    from mmassist.core.contract.testing import moving_shapes, write_test_video

    return write_test_video(path, moving_shapes(num_frames, 32, 32, seed=0).astype(np.uint8), fps=8)


def zero_frame_video(path: Path) -> Path:
    """A valid container with an H.264 video stream that holds no frame."""
    import av

    from mmassist.core.contract.testing import _pick_codec

    with av.open(str(path), "w") as container:
        stream = container.add_stream(_pick_codec(path.suffix), rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()  # writes the header; no frame is ever muxed
    return path


def unknown_codec_video(path: Path) -> Path:
    """A Matroska file whose video track names a codec no decoder knows (``V_XXXXX/XXX/XXX``)."""
    good = good_video(path.with_name("codec-source.mkv"), 8).read_bytes()
    assert b"V_MPEG4/ISO/AVC" in good, "the test video is not H.264; pick another codec id to replace"
    path.write_bytes(good.replace(b"V_MPEG4/ISO/AVC", b"V_XXXXX/XXX/XXX"))
    return path


def bad_videos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = good_video(folder / "source.mp4").read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    out = {name: folder / name for name in ("empty.mp4", "truncated.mp4", "garbage.mp4")}
    out["zero_frames.mp4"] = zero_frame_video(folder / "zero_frames.mp4")
    out["unknown_codec.mkv"] = unknown_codec_video(folder / "unknown_codec.mkv")
    return out


# -- files no plugin reads ------------------------------------------------------------------------


def unsupported_files(folder: Path) -> dict[str, Path]:
    """Files of types no built-in plugin accepts, named for what they are."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "report.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(range(256)) * 4,
        "song.wav": b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00" + b"\x00" * 2000,
        "archive.bin": np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


# -- datasets -------------------------------------------------------------------------------------


def conversation(image: str | None = "red.png", answer: str = "a red square") -> dict[str, Any]:
    """A LLaVA-style record; with ``image=None`` a text-only one."""
    question = "What is it?" if image is None else "<image>\nWhat is it?"
    record: dict[str, Any] = {"conversations": [{"from": "human", "value": question},
                                                {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


def jsonl(records: list[Any]) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


# -- the command line -----------------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``mmassist ARGV`` in this process: (exit status, stdout, stderr)."""
    from mmassist.core.cli import main

    capsys.readouterr()  # drop what earlier steps printed
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """A user's mistake on the command line: status 2, one line on stderr, no traceback."""
    assert code == 2, f"exit status {code}, stderr: {err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"the error must be one line, got {len(lines)}:\n{err}"
    assert lines[0].startswith("mmassist ") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in: {lines[0]}"
    return lines[0]


def rss_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc, else psutil), or None when unknown."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20
