"""Projectors: encoder features (B, T, D_in) -> decoder-width tokens (B, T', D_out).

Every projector has the same forward: ``(features, mask, time_index=None) -> (features, mask,
time_index)``. Token-preserving projectors (linear, mlp) pass mask and time_index through; the
resampler returns ``num_latents`` tokens per item, all real, with no time_index (time must be added
to the features before it, which :class:`mmassist.fusion.module.FusionModule` does).
"""

from __future__ import annotations

import torch
from torch import nn

from mmassist.core.errors import ConfigError
from mmassist.fusion.config import ProjectorConfig

ProjectorOutput = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


class LinearProjector(nn.Module):
    """One Linear layer per token (LLaVA-1.0)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                time_index: torch.Tensor | None = None) -> ProjectorOutput:
        return self.linear(features), mask, time_index  # (B, T, D_out)


class MLPProjector(nn.Module):
    """Linear -> GELU -> Linear per token (LLaVA-1.5's ``mlp2x_gelu``).

    Attribute names match transformers' ``LlavaMultiModalProjector`` (``linear_1``, ``act``,
    ``linear_2``) so its weights load 1:1 with ``load_state_dict``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_size: int | None = None):
        super().__init__()
        hidden = hidden_size or out_dim
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as HF's ACT2FN["gelu"]
        self.linear_2 = nn.Linear(hidden, out_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                time_index: torch.Tensor | None = None) -> ProjectorOutput:
        x = self.linear_2(self.act(self.linear_1(features)))  # (B, T, D_out)
        return x, mask, time_index


class ResamplerBlock(nn.Module):
    """Pre-norm block: latents cross-attend to [features; latents], then an MLP (Flamingo)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_features = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout),
        )

    def forward(self, latents: torch.Tensor, features: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        q = self.norm_latents(latents)  # (B, L, D)
        # keys include the latents themselves, so an item with no real feature token still has keys
        kv = torch.cat([self.norm_features(features), q], dim=1)  # (B, T + L, D)
        latents = latents + self.attn(q, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0]
        latents = latents + self.mlp(self.norm_mlp(latents))
        return latents  # (B, L, D)


class PerceiverResampler(nn.Module):
    """``num_latents`` learned queries that cross-attend to the features: (B, T, D_in) -> (B, L, D_out).

    The output length is ``num_latents`` whatever T is; padded feature tokens (mask False) are never
    attended to. Time information must already be in the features.
    """

    def __init__(self, in_dim: int, out_dim: int, num_latents: int = 32, depth: int = 2, heads: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        if out_dim % heads:
            raise ConfigError(f"projector.heads={heads} must divide the decoder width {out_dim}; "
                              f"choose a divisor of {out_dim}")
        self.in_proj = nn.Linear(in_dim, out_dim)
        self.latents = nn.Parameter(torch.randn(num_latents, out_dim) * 0.02)
        self.blocks = nn.ModuleList([ResamplerBlock(out_dim, heads, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor,
                time_index: torch.Tensor | None = None) -> ProjectorOutput:
        B = features.shape[0]
        L = self.latents.shape[0]
        x = self.in_proj(features)  # (B, T, D)
        latents = self.latents.unsqueeze(0).expand(B, -1, -1)  # (B, L, D)
        # nn.MultiheadAttention wants True where a key is ignored; latent keys are always kept
        ignore = torch.cat([~mask.bool(), mask.new_zeros(B, L, dtype=torch.bool)], dim=1)  # (B, T + L)
        for block in self.blocks:
            latents = block(latents, x, ignore)
        out = self.norm(latents)  # (B, L, D)
        return out, torch.ones(B, L, dtype=torch.bool, device=out.device), None


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    """The projector ``cfg`` describes, from encoder width ``in_dim`` to decoder width ``out_dim``."""
    if cfg.kind == "linear":
        return LinearProjector(in_dim, out_dim)
    if cfg.kind == "mlp":
        return MLPProjector(in_dim, out_dim, cfg.hidden_size)
    if cfg.kind == "resampler":
        return PerceiverResampler(in_dim, out_dim, cfg.num_latents, cfg.depth, cfg.heads, cfg.dropout)
    raise ConfigError(f"projector.kind={cfg.kind!r} is not allowed; choose one of 'linear', 'mlp', 'resampler'")
