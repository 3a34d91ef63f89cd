"""Features of frozen encoders, computed once per distinct input and reused.

Keyed by content (a hash of the bytes, plus the modality), not by path, so a renamed copy of a file
hits the cache and an edited file misses it. Entries hold only real tokens, on the model's device.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch

from mmassist.core.contract.encoders import EncoderOutput, pad_sequences
from mmassist.core.contract.media import Media


def content_key(modality: str, media: Media) -> str:
    """A hash of what the encoder would see."""
    h = hashlib.blake2b(digest_size=20)
    h.update(modality.encode())
    if isinstance(media.value, str):
        h.update(b"text:" + media.value.encode("utf-8", "surrogatepass"))
    elif media.value is not None:  # a PIL image
        img = media.value
        h.update(f"pil:{img.mode}:{img.size}".encode())
        h.update(img.tobytes())
    else:
        h.update(media.read_bytes())
    return h.hexdigest()


class FeatureCache:
    """Per-item encoder outputs for the modalities in ``modalities``."""

    def __init__(self, modalities: Iterable[str]):
        self.modalities = set(modalities)
        self._store: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def put(self, keys: list[str], output: EncoderOutput) -> None:
        """Store each row of a batch output under its key (real tokens only)."""
        for i, key in enumerate(keys):
            m = output.mask[i]
            time = output.time_index[i][m] if output.time_index is not None else None
            self._store[key] = (output.features[i][m].detach(), time)

    def get(self, keys: list[str]) -> EncoderOutput:
        """The batch output for ``keys``, padded, as the encoder would have returned it."""
        feats = [self._store[k][0] for k in keys]
        features, mask = pad_sequences(feats)  # (B, T, D), (B, T)
        times = [self._store[k][1] for k in keys]
        time_index = pad_sequences(times)[0] if all(t is not None for t in times) else None
        return EncoderOutput(features=features, mask=mask, time_index=time_index)
