"""Reading signal files and the ``signal/conv1d`` encoder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mmassist import core
from mmassist.core.contract.encoders import pad_sequences

MIME_TYPES = ("text/csv", "application/x-npy")
EXTENSIONS = (".csv", ".npy")
MAGIC = (b"\x93NUMPY",)


@dataclass
class SignalConfig:
    """``encoders.signal.config``."""

    channels: int = 3            # columns read from each file (more are an error; fewer are zero-padded)
    hidden_size: int = 64        # the encoder's output width
    max_samples: int = 100_000   # refuse longer files
    normalize: bool = True       # scale each file to zero mean and unit variance per channel

    def __post_init__(self):
        if not 1 <= self.channels <= 64:
            raise core.ConfigError("signal.channels must be between 1 and 64")
        if self.hidden_size < 4:
            raise core.ConfigError("signal.hidden_size must be at least 4")


def tiny_config() -> SignalConfig:
    return SignalConfig(channels=3, hidden_size=16)


def read_signal(media: core.Media, cfg: SignalConfig) -> np.ndarray:
    """A file's samples as a (samples, channels) float32 array."""
    data = media.read_bytes()
    try:
        if data.startswith(MAGIC[0]):
            array = np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle
        else:
            text = data.decode("utf-8")
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines and not _is_numeric_row(lines[0]):
                lines = lines[1:]  # a header
            array = np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=2)
    except (ValueError, UnicodeDecodeError, EOFError, OSError) as e:
        raise core.UndecodableInputError(f"{media.name} is not a readable signal (CSV of numbers or .npy): "
                                         f"{e}") from None
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < 4:
        raise core.UndecodableInputError(f"{media.name}: a signal needs at least 4 samples of shape "
                                         f"(samples, channels); got {array.shape}")
    if array.shape[1] > cfg.channels:
        raise core.UndecodableInputError(f"{media.name} has {array.shape[1]} channels; this encoder reads "
                                         f"{cfg.channels} (signal.channels)")
    if array.shape[0] > cfg.max_samples:
        raise core.UndecodableInputError(f"{media.name} has {array.shape[0]} samples, over "
                                         f"signal.max_samples={cfg.max_samples}")
    if not np.isfinite(array).all():
        raise core.UndecodableInputError(f"{media.name} holds NaN or infinite values")
    if array.shape[1] < cfg.channels:
        array = np.pad(array, ((0, 0), (0, cfg.channels - array.shape[1])))
    if cfg.normalize:
        array = (array - array.mean(0)) / (array.std(0) + 1e-3)
    return array


def _is_numeric_row(line: str) -> bool:
    try:
        [float(x) for x in line.split(",")]
        return True
    except ValueError:
        return False


class SignalEncoder(core.Encoder):
    """Two strided Conv1d layers (4x fewer steps), one token per four samples."""

    def __init__(self, cfg: SignalConfig):
        super().__init__()
        self.config = cfg
        self.output_dim = cfg.hidden_size
        self.conv1 = nn.Conv1d(cfg.channels, cfg.hidden_size, kernel_size=5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel_size=5, stride=2, padding=2)

    def preprocess(self, items: Sequence[core.Media]) -> dict[str, torch.Tensor]:
        signals, mask = pad_sequences([torch.from_numpy(read_signal(m, self.config)) for m in items])
        return {"signals": signals, "mask": mask}  # (B, S, C), (B, S)

    def forward(self, signals: torch.Tensor, mask: torch.Tensor) -> core.EncoderOutput:
        lengths = mask.sum(1)  # (B,)
        x = (signals * mask.unsqueeze(-1)).transpose(1, 2)  # (B, C, S)
        for conv in (self.conv1, self.conv2):
            x = nn.functional.gelu(conv(x))  # (B, D, S/2)
            lengths = (lengths + 1) // 2
            steps = torch.arange(x.shape[2], device=x.device)
            # Zero the steps past each signal's end, as a signal alone would see there (conv padding).
            x = x * (steps[None, :] < lengths[:, None]).unsqueeze(1)
        token_mask = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        return core.EncoderOutput(features=x.transpose(1, 2), mask=token_mask)  # (B, T, D)


def example_inputs(tmp_dir: Path) -> list[Path]:
    """A CSV with a header and a .npy file, of different lengths."""
    tmp_dir = Path(tmp_dir)
    t = np.arange(64, dtype=np.float32) / 16
    csv = tmp_dir / "walk.csv"
    rows = "\n".join(f"{np.sin(6 * x):.4f},{np.cos(6 * x):.4f},{0.1 * x:.4f}" for x in t)
    csv.write_text("x,y,z\n" + rows + "\n", encoding="utf-8")
    npy = tmp_dir / "rest.npy"
    np.save(npy, np.random.default_rng(0).normal(0, 0.05, size=(40, 3)).astype(np.float32))
    return [csv, npy]
