"""Configs of the fusion module: how each modality is projected, embedded and mixed.

``FusionModuleConfig`` is nested into the top-level config as ``cfg.fusion``; its ``projector`` is
the default for every modality and ``modality_projectors`` replaces it for the modalities it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmassist.core.schema import check_choice, check_range, from_dict, help_field
from mmassist.core.errors import ConfigError

PROJECTOR_KINDS = ("linear", "mlp", "resampler")
TEMPORAL_KINDS = ("none", "learned", "sinusoidal")

# modality names become nn.ModuleDict / nn.ParameterDict keys, so no dots
_MODALITY_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


def check_modality_name(path: str, name: object) -> None:
    """Raise ConfigError unless ``name`` is a valid modality name (lower case, no dots)."""
    if not isinstance(name, str) or not _MODALITY_RE.match(name):
        raise ConfigError(f"{path}: modality name {name!r} must be lower case letters, digits, '_' or '-' "
                          f"and start with a letter (like 'image' or 'video')")


@dataclass
class ProjectorConfig:
    """How one modality's encoder features (B, T, D_enc) are mapped to the decoder width."""

    kind: str = help_field("mlp", choices=PROJECTOR_KINDS, help=(
        "linear: one Linear layer; mlp: Linear-GELU-Linear (LLaVA-1.5's mlp2x_gelu); "
        "resampler: a Perceiver resampler that turns any number of tokens into num_latents tokens"))
    hidden_size: int | None = help_field(None, help="mlp: hidden width; empty = the decoder width")
    num_latents: int = help_field(32, help="resampler: number of output tokens per item")
    depth: int = help_field(2, help="resampler: number of cross-attention blocks")
    heads: int = help_field(4, help="resampler: attention heads; must divide the decoder width")
    dropout: float = help_field(0.0, help="resampler: dropout in attention and MLP (0 = none)")

    def __post_init__(self):
        check_choice("projector.kind", self.kind, PROJECTOR_KINDS)
        if self.hidden_size is not None:
            check_range("projector.hidden_size", self.hidden_size, lo=1)
        check_range("projector.num_latents", self.num_latents, lo=1)
        check_range("projector.depth", self.depth, lo=1)
        check_range("projector.heads", self.heads, lo=1)
        check_range("projector.dropout", self.dropout, lo=0.0, hi=1.0)


@dataclass
class FusionModuleConfig:
    """Projectors, modality/temporal embeddings and joint layers that turn features into decoder inputs."""

    projector: ProjectorConfig = help_field(default_factory=ProjectorConfig, help=(
        "the projector of every modality not named in modality_projectors"))
    modality_projectors: dict[str, ProjectorConfig] = help_field(default_factory=dict, help=(
        "per-modality projectors, e.g. {video: {kind: resampler}}; each replaces the default one "
        "entirely (unset keys take ProjectorConfig's defaults, not fusion.projector's)"))
    modality_embeddings: bool = help_field(True, help=(
        "add one learned vector per modality to its projected tokens so the decoder can tell them apart"))
    temporal_embeddings: str = help_field("learned", choices=TEMPORAL_KINDS, help=(
        "time embedding added to encoder features that carry a time_index (video frames) before "
        "projection: none, learned (one vector per frame index) or sinusoidal (fixed)"))
    max_time: int = help_field(256, help="largest frame index + 1 the temporal embedding accepts")
    position_embeddings: list[str] = help_field(default_factory=list, help=(
        "modalities whose tokens get a learned vector per token index within an image (within a frame, "
        "for tokens that carry a time_index), added before projection, e.g. [image, video]: the token "
        "then says where in the picture it is, which a CNN's features hardly do and the decoder's "
        "rotary positions do not pass on"))
    max_positions: int = help_field(256, help="most tokens in one image or frame the position embedding accepts")
    joint_layers: int = help_field(0, help=(
        "transformer layers over all media tokens of one example, across modalities (0 = none)"))
    joint_heads: int = help_field(4, help="attention heads of the joint layers; must divide the decoder width")
    dropout: float = help_field(0.0, help="dropout in the joint layers (0 = none)")

    def __post_init__(self):
        # direct construction with plain dicts is allowed; from_dict gives the same result
        if isinstance(self.projector, dict):
            self.projector = from_dict(ProjectorConfig, self.projector, "fusion.projector")
        if not isinstance(self.projector, ProjectorConfig):
            raise ConfigError(f"fusion.projector must be a ProjectorConfig or a mapping, got {self.projector!r}")
        if not isinstance(self.modality_projectors, dict):
            raise ConfigError(f"fusion.modality_projectors must be a mapping of modality to projector, "
                              f"got {self.modality_projectors!r}")
        projectors = {}
        for name, proj in self.modality_projectors.items():
            path = f"fusion.modality_projectors.{name}"
            check_modality_name("fusion.modality_projectors", name)
            if isinstance(proj, dict):
                proj = from_dict(ProjectorConfig, proj, path)
            if not isinstance(proj, ProjectorConfig):
                raise ConfigError(f"{path} must be a ProjectorConfig or a mapping, got {proj!r}")
            projectors[name] = proj
        self.modality_projectors = projectors
        check_choice("fusion.temporal_embeddings", self.temporal_embeddings, TEMPORAL_KINDS)
        check_range("fusion.max_time", self.max_time, lo=1)
        if not isinstance(self.position_embeddings, (list, tuple)):
            raise ConfigError(f"fusion.position_embeddings must be a list of modality names, like [image, video]; "
                              f"got {self.position_embeddings!r}")
        for name in self.position_embeddings:
            check_modality_name("fusion.position_embeddings", name)
        self.position_embeddings = list(self.position_embeddings)
        check_range("fusion.max_positions", self.max_positions, lo=1)
        check_range("fusion.joint_layers", self.joint_layers, lo=0)
        check_range("fusion.joint_heads", self.joint_heads, lo=1)
        check_range("fusion.dropout", self.dropout, lo=0.0, hi=1.0)

    def projector_for(self, modality: str) -> ProjectorConfig:
        """The projector config of ``modality``: its override if any, else the default."""
        return self.modality_projectors.get(modality, self.projector)
