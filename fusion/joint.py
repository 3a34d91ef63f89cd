"""Joint fusion: a small transformer over all media tokens of one example, across modalities."""

from __future__ import annotations

import torch
from torch import nn

from mmassist.core.errors import ConfigError


class JointFusion(nn.Module):
    """``num_layers`` pre-norm transformer encoder layers over (B, N, D) tokens with a padding mask.

    Each row holds the tokens of every media item of one example (image, video, text...), so
    attention mixes information across modalities but never across examples. With 0 layers it is
    the identity. There are no position embeddings: order inside a row does not matter, modality and
    time are already in the tokens.
    """

    def __init__(self, dim: int, num_layers: int = 0, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if num_layers and dim % heads:
            raise ConfigError(f"fusion.joint_heads={heads} must divide the decoder width {dim}; "
                              f"choose a divisor of {dim}")
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)
        ])

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), mask (B, N) bool True for real tokens -> (B, N, D); padded rows are junk."""
        x = tokens
        # TransformerEncoderLayer wants True where a key is ignored; a row with no real token
        # would give NaN, so such rows keep one key (their output is padding anyway)
        ignore = ~mask.bool()  # (B, N)
        if ignore.shape[1]:
            ignore[:, 0] &= mask.any(dim=1)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=ignore)
        return x  # (B, N, D)
