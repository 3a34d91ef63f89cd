"""Model and data builders shared by the measurements: configs, images, prompts, a LLaVA twin."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def llama(hidden: int, layers: int, heads: int, intermediate: int | None = None, **extra: Any) -> dict[str, Any]:
    """``decoder.init`` values of a Llama decoder."""
    return {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate or 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": 2048, **extra}


def fusion_config(encoders: dict[str, Any], decoder: dict[str, Any], *, projector: dict[str, Any] | None = None,
                  llava_like: bool = True, **sections: Any):
    """A FusionConfig with a byte tokenizer; ``llava_like``: no modality or temporal embeddings, so
    that the fused model computes exactly what LLaVA does."""
    from mmassist import core

    fusion = {"projector": projector or {"kind": "mlp"}}
    if llava_like:
        fusion.update(modality_embeddings=False, temporal_embeddings="none")
    return core.FusionConfig.from_dict({
        "encoders": encoders,
        "decoder": {"init": decoder, "tokenizer": "bytes", "max_length": 2048},
        "fusion": fusion,
        **sections,
    })


def build_model(cfg, seed: int = 0):
    """(MultimodalModel, tokenizer) for ``cfg``, built offline with a fixed seed."""
    from mmassist import core
    from mmassist.core.runtime.model import MultimodalModel, build_tokenizer_for

    torch.manual_seed(seed)
    tokenizer = build_tokenizer_for(cfg)
    return MultimodalModel(cfg, core.Host(load_entrypoints=False), tokenizer), tokenizer


def images(n: int, size: int, seed: int = 0):
    """``n`` distinct RGB PIL images: smooth colour fields with a few bright squares."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    ys, xs = np.mgrid[0:size, 0:size]
    for _ in range(n):
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-1, 1, size=(2, 3))
        img = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
        for _ in range(3):
            x0, y0, s = rng.integers(0, size // 2, size=3)
            img[y0:y0 + s, x0:x0 + s] = rng.uniform(0, 255, size=3)
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


WORDS = ("the a red blue green small large square circle left right top bottom near far above below shape "
         "colour picture scene object corner centre bright dark moving still one two three").split()


def sentence(rng: np.random.Generator, chars: int) -> str:
    """About ``chars`` characters of words."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(str(rng.choice(WORDS)))
    return " ".join(words).capitalize()


def caption_examples(n: int, image_size: int, prompt_chars: tuple[int, int], answer_chars: tuple[int, int],
                     seed: int = 0) -> list[dict[str, Any]]:
    """Conversations ``{"messages", "image"}`` with prompts of varied length (uniform in ``prompt_chars``)."""
    rng = np.random.default_rng(seed)
    pics = images(n, image_size, seed)
    out = []
    for i in range(n):
        prompt = sentence(rng, int(rng.integers(*prompt_chars))) + "?"
        answer = sentence(rng, int(rng.integers(*answer_chars))) + "."
        out.append({"messages": [{"role": "user", "content": "<image>\n" + prompt},
                                 {"role": "assistant", "content": answer}], "image": pics[i]})
    return out


class FeaturesOf(torch.nn.Module):
    """LLaVA's vision tower slot holding our frozen image encoder: the same module, the same features."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        feats = self.encoder(pixel_values=pixel_values).features  # (B, T, D)
        return BaseModelOutputWithPooling(last_hidden_state=feats, hidden_states=(feats,))


def llava_twin(model, image_id: int):
    """A transformers ``LlavaForConditionalGeneration`` with our model's weights: the same Llama
    decoder, the same MLP projector, and our frozen image encoder as its vision tower."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    dec = model.decoder.config
    encoder = model.encoders["image"]
    llava_cfg = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": encoder.output_dim, "num_hidden_layers": 1,
                       "num_attention_heads": 1, "intermediate_size": 8, "image_size": 32, "patch_size": 16},
        text_config=LlamaConfig(**{k: getattr(dec, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters")}),
        image_token_id=image_id, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="full", multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(llava_cfg)
    llava.model.multi_modal_projector.load_state_dict(model.fusion.projectors["image"].state_dict())
    llava.model.language_model.load_state_dict(model.decoder.model.state_dict())
    llava.lm_head.load_state_dict(model.decoder.lm_head.state_dict())
    llava.model.vision_tower = FeaturesOf(encoder)
    llava.model.vision_tower.requires_grad_(False)
    return llava
