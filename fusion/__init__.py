"""How modality features become decoder inputs: projectors, embeddings, joint layers, splicing.

Typical use inside the model::

    fused = fusion(encoder_outputs, make_layout(item_modalities))   # [b][k] -> FusedItem
    ids, mask, labels = expand_placeholders(ids, mask, labels, placeholder_ids, token_counts(fused))
    embeds = splice(decoder.get_input_embeddings()(ids), ids, placeholder_ids, fused)
"""

from mmassist.fusion.config import PROJECTOR_KINDS, TEMPORAL_KINDS, FusionModuleConfig, ProjectorConfig
from mmassist.fusion.embeddings import ModalityEmbedding, TemporalEmbedding, sinusoidal_table
from mmassist.fusion.joint import JointFusion
from mmassist.fusion.module import FusedItem, FusionModule, make_layout, token_counts
from mmassist.fusion.projector import LinearProjector, MLPProjector, PerceiverResampler, ResamplerBlock, build_projector
from mmassist.fusion.splice import IGNORE_INDEX, check_token_counts, expand_placeholders, splice

__all__ = [
    "IGNORE_INDEX",
    "PROJECTOR_KINDS",
    "TEMPORAL_KINDS",
    "FusedItem",
    "FusionModule",
    "FusionModuleConfig",
    "JointFusion",
    "LinearProjector",
    "MLPProjector",
    "ModalityEmbedding",
    "PerceiverResampler",
    "ProjectorConfig",
    "ResamplerBlock",
    "TemporalEmbedding",
    "build_projector",
    "check_token_counts",
    "expand_placeholders",
    "make_layout",
    "sinusoidal_table",
    "splice",
    "token_counts",
]
