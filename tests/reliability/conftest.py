"""Fixtures of the reliability suite: one plugin host, one tiny model saved once, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmassist import core

from .helpers import bad_images, bad_videos, good_video, png_bytes, tiny_config, unsupported_files


@pytest.fixture(autouse=True)
def _builtin_plugins_only(monkeypatch):
    """The CLI builds its own Host: let it load the built-in plugins only, as the fixtures' host does."""
    monkeypatch.setenv("MMASSIST_NO_PLUGINS", "1")


@pytest.fixture(scope="session")
def checkpoint(host, tmp_path_factory) -> Path:
    """A tiny, untrained image + video chat model saved as a checkpoint folder."""
    torch.manual_seed(0)
    asst = core.Assistant.from_config(tiny_config(), host=host)
    return asst.save_pretrained(tmp_path_factory.mktemp("reliability") / "model")


@pytest.fixture(scope="session")
def assistant(checkpoint, host) -> core.Assistant:
    return core.Assistant.from_pretrained(checkpoint, host=host)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Good and bad files by name: ``red.png``, ``clip.mp4``, then every bad image, video and
    unsupported file of :mod:`tests.reliability.helpers`."""
    folder = tmp_path_factory.mktemp("media")
    (folder / "red.png").write_bytes(png_bytes((32, 32), "red"))
    files = {"red.png": folder / "red.png", "clip.mp4": good_video(folder / "clip.mp4")}
    files.update(bad_images(folder / "images"))
    files.update(bad_videos(folder / "videos"))
    files.update(unsupported_files(folder / "other"))
    return files
