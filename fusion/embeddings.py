"""Embeddings added to media tokens: which modality a token is from, which frame, and where in it."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mmassist.core.schema import check_choice
from mmassist.core.errors import ConfigError
from mmassist.fusion.config import TEMPORAL_KINDS, check_modality_name


class ModalityEmbedding(nn.Module):
    """One learned vector per modality name, added to every token of that modality.

    Stored in an ``nn.ParameterDict`` keyed by name, so checkpoints do not depend on the order in
    which modalities were listed.
    """

    def __init__(self, modalities: Sequence[str], dim: int):
        super().__init__()
        for name in modalities:
            check_modality_name("modality embedding", name)
        self.embeddings = nn.ParameterDict({m: nn.Parameter(torch.randn(dim) * 0.02) for m in modalities})

    def forward(self, modality: str) -> torch.Tensor:
        """The (D,) vector of ``modality``."""
        if modality not in self.embeddings:
            raise KeyError(f"no modality embedding for {modality!r}; known: {', '.join(self.embeddings)}")
        return self.embeddings[modality]


def sinusoidal_table(max_time: int, dim: int) -> torch.Tensor:
    """The fixed (max_time, dim) sin/cos table of "Attention Is All You Need"."""
    position = torch.arange(max_time, dtype=torch.float32).unsqueeze(1)  # (max_time, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    table = torch.zeros(max_time, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])  # odd dim: one fewer cos column
    return table  # (max_time, dim)


class TemporalEmbedding(nn.Module):
    """A vector per time index (frame): ``learned`` (nn.Embedding) or ``sinusoidal`` (fixed).

    forward(time_index (B, T) long) -> (B, T, D). Indices outside [0, max_time) raise ConfigError
    rather than being clamped, so frames are never silently given the same time.
    """

    def __init__(self, kind: str, max_time: int, dim: int):
        super().__init__()
        check_choice("fusion.temporal_embeddings", kind, tuple(k for k in TEMPORAL_KINDS if k != "none"))
        self.kind = kind
        self.max_time = max_time
        if kind == "learned":
            self.embedding = nn.Embedding(max_time, dim)
            nn.init.normal_(self.embedding.weight, std=0.02)
        else:
            # not persistent: it is recomputed, so it never needs to be in a checkpoint
            self.register_buffer("table", sinusoidal_table(max_time, dim), persistent=False)

    def forward(self, time_index: torch.Tensor) -> torch.Tensor:
        if time_index.numel():
            lo, hi = int(time_index.min()), int(time_index.max())
            if lo < 0 or hi >= self.max_time:
                raise ConfigError(
                    f"time index {lo if lo < 0 else hi} is outside [0, fusion.max_time={self.max_time}); "
                    f"sample fewer frames or raise fusion.max_time (a trained learned table cannot grow)")
        if self.kind == "learned":
            return self.embedding(time_index)  # (B, T, D)
        return self.table[time_index]  # (B, T, D)


def positions_in_frame(time_index: torch.Tensor) -> torch.Tensor:
    """Each token's index within its frame, for (N, T) frame indices whose frames are contiguous runs:
    ``[[0, 0, 1, 1, 1]] -> [[0, 1, 0, 1, 2]]``."""
    n, t = time_index.shape
    index = torch.arange(t, device=time_index.device).expand(n, t)
    starts = torch.ones_like(time_index, dtype=torch.bool)
    starts[:, 1:] = time_index[:, 1:] != time_index[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # start of each run
    return index - first


class PositionEmbedding(nn.Module):
    """A learned vector per token index within an item, or within a frame when ``time_index`` is given.

    forward(n_items, n_tokens, time_index (N, T) or None, mask (N, T) or None) -> (N, T, D); padding
    tokens (mask False) get index 0. More tokens in an image or frame than ``max_positions`` raise
    ConfigError rather than sharing a vector.
    """

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        self.max_positions = max_positions
        self.embedding = nn.Embedding(max_positions, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, n_items: int, n_tokens: int, time_index: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        device = self.embedding.weight.device
        if time_index is not None:
            pos = positions_in_frame(time_index.to(device))
        else:
            pos = torch.arange(n_tokens, device=device).expand(n_items, n_tokens)
        if mask is not None:  # a padded clip's empty frames share index 0: their tokens are one long run
            pos = pos.masked_fill(~mask.to(device=device, dtype=torch.bool), 0)
        if pos.numel() and int(pos.max()) >= self.max_positions:
            raise ConfigError(f"an item has {int(pos.max()) + 1} tokens in one image or frame, more than "
                              f"fusion.max_positions={self.max_positions}; raise it (a trained table cannot grow)")
        return self.embedding(pos)  # (N, T, D)
