"""FusionModule: encoder outputs of a batch -> decoder-width tokens per media item, in prompt order.

The caller encodes every media item of a batch modality by modality: all images of all examples in
one encoder call, all videos in another. ``layout`` says where each of those rows belongs::

    layout = [[("image", 0), ("video", 0)],   # example 0: its first image, then its first video
              [("image", 1)]]                 # example 1: one image
    fused = fusion(outputs, layout)           # fused[b][k] = FusedItem(modality, tokens (n, D_dec))

:func:`make_layout` builds the layout from the modalities of each example's items, numbering rows
example by example, which is the order the caller stacks the encoder inputs in.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from mmassist.core.contract.encoders import EncoderOutput
from mmassist.core.errors import ConfigError, UnsupportedInputError
from mmassist.fusion.config import FusionModuleConfig, check_modality_name
from mmassist.fusion.embeddings import ModalityEmbedding, PositionEmbedding, TemporalEmbedding
from mmassist.fusion.joint import JointFusion
from mmassist.fusion.projector import build_projector

Layout = Sequence[Sequence[tuple[str, int]]]


class FusedItem(NamedTuple):
    """The decoder-width tokens of one media item: ``tokens`` is (n, D_dec), padding already dropped."""

    modality: str
    tokens: torch.Tensor


def make_layout(item_modalities: Sequence[Sequence[str]]) -> list[list[tuple[str, int]]]:
    """The layout for examples whose media items have these modalities, in order.

    Row ``i`` of modality ``m`` is the i-th item of modality ``m`` counting example by example, e.g.
    ``[["image", "video"], ["image"]] -> [[("image", 0), ("video", 0)], [("image", 1)]]``.
    """
    next_row: dict[str, int] = {}
    layout = []
    for items in item_modalities:
        row = []
        for m in items:
            row.append((m, next_row.get(m, 0)))
            next_row[m] = next_row.get(m, 0) + 1
        layout.append(row)
    return layout


def token_counts(fused: Sequence[Sequence[FusedItem]]) -> list[list[tuple[str, int]]]:
    """(modality, number of tokens) per item per example: the ``counts`` of :func:`expand_placeholders`."""
    return [[(item.modality, int(item.tokens.shape[0])) for item in example] for example in fused]


class FusionModule(nn.Module):
    """Projectors + modality/temporal embeddings + joint layers, for a fixed set of modalities.

    Per modality: features (N_items, T, D_enc) + temporal embedding of ``time_index`` (at encoder
    width, so the resampler sees time too) + position embedding (token index within the image or
    frame, for the modalities in ``position_embeddings``) -> projector -> (N_items, T', D_dec) + modality
    embedding. Then the real tokens of each example's items are gathered in layout order and, if
    ``joint_layers`` > 0, mixed by :class:`JointFusion` across modalities within the example.
    """

    def __init__(self, config: FusionModuleConfig, encoder_dims: Mapping[str, int], decoder_hidden_size: int,
                 temporal_modalities: Iterable[str] | None = None):
        super().__init__()
        if not encoder_dims:
            raise ConfigError("the fusion module needs at least one modality; none was configured")
        for field, names in (("modality_projectors", config.modality_projectors),
                             ("position_embeddings", config.position_embeddings)):
            unknown = sorted(set(names) - set(encoder_dims))
            if unknown:
                raise ConfigError(f"fusion.{field} names {', '.join(map(repr, unknown))} but the "
                                  f"configured modalities are {', '.join(map(repr, encoder_dims))}")
        for name in encoder_dims:
            check_modality_name("fusion", name)
        self.config = config
        self.encoder_dims = dict(encoder_dims)
        self.hidden_size = decoder_hidden_size
        self.projectors = nn.ModuleDict({
            m: build_projector(config.projector_for(m), d, decoder_hidden_size) for m, d in encoder_dims.items()
        })
        self.temporal = None
        # Only modalities whose encoders give a time_index get a table: unused weights would
        # upset DDP. None means all modalities.
        timed = set(encoder_dims if temporal_modalities is None else temporal_modalities)
        if config.temporal_embeddings != "none" and timed:
            self.temporal = nn.ModuleDict({
                m: TemporalEmbedding(config.temporal_embeddings, config.max_time, d)
                for m, d in encoder_dims.items() if m in timed
            })
        self.position = None
        if config.position_embeddings:
            self.position = nn.ModuleDict({m: PositionEmbedding(config.max_positions, encoder_dims[m])
                                           for m in config.position_embeddings})
        self.modality = None
        if config.modality_embeddings:
            self.modality = ModalityEmbedding(list(encoder_dims), decoder_hidden_size)
        self.joint = JointFusion(decoder_hidden_size, config.joint_layers, config.joint_heads, config.dropout)

    def project(self, modality: str, output: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """One modality's encoder output -> (tokens (N, T', D_dec), mask (N, T')), before joint layers."""
        if modality not in self.projectors:
            raise UnsupportedInputError(f"this model takes no {modality} input; it was built for "
                                        f"{', '.join(self.projectors)}")
        x = output.features
        if x.dim() != 3 or x.shape[-1] != self.encoder_dims[modality]:
            raise ValueError(f"{modality} features have shape {tuple(x.shape)}; expected (N, T, "
                             f"{self.encoder_dims[modality]})")
        proj = self.projectors[modality]
        x = x.to(next(proj.parameters()).dtype)  # encoders may run in another dtype
        if self.temporal is not None and modality in self.temporal and output.time_index is not None:
            x = x + self.temporal[modality](output.time_index).to(x.dtype)  # (N, T, D_enc)
        if self.position is not None and modality in self.position:
            x = x + self.position[modality](x.shape[0], x.shape[1], output.time_index,
                                                output.mask).to(x.dtype)
        x, mask, _ = proj(x, output.mask, output.time_index)  # (N, T', D_dec)
        if self.modality is not None:
            x = x + self.modality(modality).to(x.dtype)
        return x, mask.bool()

    def forward(self, outputs: Mapping[str, EncoderOutput], layout: Layout) -> list[list[FusedItem]]:
        """Fuse a batch. ``outputs[m]`` holds every item of modality m (rows), ``layout[b]`` lists
        example b's items as (modality, row) in prompt order; returns ``fused[b][k]`` for each.

        Every row of every output must appear in the layout exactly once.
        """
        _check_layout(outputs, layout)
        projected = {m: self.project(m, out) for m, out in outputs.items()}
        items = []
        for example in layout:
            row = []
            for m, i in example:
                x, mask = projected[m]
                row.append((m, x[i][mask[i]]))  # (n_i, D_dec): real tokens only
            items.append(row)
        if len(self.joint.layers):
            items = self._mix(items)
        return [[FusedItem(m, t) for m, t in example] for example in items]

    def _mix(self, items: list[list[tuple[str, torch.Tensor]]]) -> list[list[tuple[str, torch.Tensor]]]:
        """Run the joint layers over each example's concatenated item tokens."""
        lengths = [sum(t.shape[0] for _, t in example) for example in items]
        N = max(lengths, default=0)
        if N == 0:
            return items
        ref = next(t for example in items for _, t in example)
        x = ref.new_zeros(len(items), N, ref.shape[-1])  # (B, N, D)
        mask = torch.zeros(len(items), N, dtype=torch.bool, device=ref.device)  # (B, N)
        for b, example in enumerate(items):
            if lengths[b]:
                x[b, : lengths[b]] = torch.cat([t for _, t in example])
                mask[b, : lengths[b]] = True
        x = self.joint(x, mask)  # (B, N, D)
        mixed = []
        for b, example in enumerate(items):
            sizes = [t.shape[0] for _, t in example]
            pieces = x[b, : lengths[b]].split(sizes) if sizes else []
            mixed.append([(m, p) for (m, _), p in zip(example, pieces)])
        return mixed


def _check_layout(outputs: Mapping[str, EncoderOutput], layout: Layout) -> None:
    """Raise ValueError unless the layout uses every row of every output exactly once."""
    seen: dict[str, list[int]] = {m: [] for m in outputs}
    for b, example in enumerate(layout):
        for m, i in example:
            if m not in outputs:
                raise ValueError(f"layout example {b} has a {m!r} item but no {m!r} encoder output was given")
            seen[m].append(int(i))
    for m, rows in seen.items():
        n = outputs[m].features.shape[0]
        if sorted(rows) != list(range(n)):
            raise ValueError(f"layout uses {m!r} rows {sorted(rows)} but the {m!r} output has rows 0..{n - 1}; "
                             f"each row must appear exactly once")
