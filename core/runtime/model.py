"""The fused model: plugin encoders -> fusion module -> a Hugging Face causal LM (+ a task head).

    media items ──encoders──► (N, T, D_enc) ──fusion──► tokens per item (n, D_dec)
    prompt ids (one placeholder per item) ──expand──► ids with n slots per item ──embed + splice──►
    inputs_embeds ──decoder──► logits (LM head) or pooled hidden state ──► classification head
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmassist.core.runtime.config import FusionConfig
from mmassist.core.runtime.tokenizer import CHATML_TEMPLATE, build_tokenizer
from mmassist.core.contract.encoders import EncoderOutput, check_output
from mmassist.core.errors import ConfigError
from mmassist.core.runtime.feature_cache import FeatureCache
from mmassist.core.runtime.pretrained import decoder_folder
from mmassist.core.hf import quiet_transformers
from mmassist.core.contract.host import Host
from mmassist.fusion import FusionModule, IGNORE_INDEX, expand_placeholders, make_layout, splice, token_counts


# Tasks with a head of their own on the decoder's hidden states, instead of the LM head.
HEAD_TASKS = ("classification", "token_classification")


def placeholder_token(modality: str) -> str:
    """The prompt placeholder of a modality: ``<image>``, ``<video>``, ``<audio>``..."""
    return f"<{modality}>"


@dataclass
class Batch:
    """Model inputs for B examples.

    ``input_ids`` / ``attention_mask`` (B, L) hold one placeholder token per media item; ``labels``
    (B, L) are -100 except on the tokens to learn; ``media[m]`` is the encoder-``m`` preprocessed
    input of every item of modality m, example by example in prompt order; ``item_modalities[b]``
    lists example b's items' modalities in prompt order; ``class_labels`` (B,) for classification.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    media: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    item_modalities: list[list[str]] = field(default_factory=list)
    class_labels: torch.Tensor | None = None
    padding_side: str = "right"
    # Modalities served by a feature cache: every item's content key. media[m] then holds only
    # the items missing from the cache (media_missing[m] lists their positions).
    media_keys: dict[str, list[str]] = field(default_factory=dict)
    media_missing: dict[str, list[int]] = field(default_factory=dict)
    # Token classification, over the text item's tokens (B, T): the word whose first piece each token is
    # (-1 elsewhere), and that word's tag index (-100 elsewhere) when training.
    word_index: torch.Tensor | None = None
    token_labels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        def move(t):
            return t.to(device) if t is not None else None

        return Batch(
            input_ids=move(self.input_ids), attention_mask=move(self.attention_mask), labels=move(self.labels),
            media={m: {k: v.to(device) for k, v in d.items()} for m, d in self.media.items()},
            item_modalities=self.item_modalities, class_labels=move(self.class_labels),
            padding_side=self.padding_side, media_keys=self.media_keys, media_missing=self.media_missing,
            word_index=move(self.word_index), token_labels=move(self.token_labels),
        )


@dataclass
class ModelOutput:
    loss: torch.Tensor | None
    # (B, L', vocab) for generation tasks ((B, K, vocab) when given labels and the decoder takes logits_to_keep:
    # at labelled_positions only), (B, n_labels) for classification, (B, T, n_tags) for token
    # classification (T: the text item's tokens, as in Batch.word_index)
    logits: torch.Tensor
    inputs_embeds: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


def build_tokenizer_for(cfg: FusionConfig, host: Host | None = None):
    """The decoder's tokenizer with one placeholder token per configured modality.

    :param host: resolves a registered decoder name in ``decoder.path`` (default: the built-in plugins').
    """
    from transformers import AutoTokenizer

    placeholders = [placeholder_token(m) for m in cfg.encoders]
    dec = cfg.decoder
    if dec.tokenizer == "bytes":
        return build_tokenizer(placeholders=placeholders)
    source = decoder_folder(dec.path, host) if dec.tokenizer == "auto" else dec.tokenizer
    if not Path(source).is_dir():
        raise ConfigError(f"decoder tokenizer folder {source!r} does not exist")
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=dec.trust_remote_code)
    missing = [p for p in placeholders if p not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
                               replace_extra_special_tokens=False)
    return tok


def build_decoder(cfg: FusionConfig, vocab_size: int, host: Host | None = None) -> nn.Module:
    """The causal LM from a local folder, a GGUF file or a registered name
    (:func:`mmassist.core.runtime.pretrained.decoder_folder`), or from config values, with room for
    ``vocab_size`` tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dec = cfg.decoder
    with quiet_transformers():
        if dec.init is not None:
            init = dict(dec.init)
            model_type = init.pop("model_type")
            try:
                hf_cfg = AutoConfig.for_model(model_type, vocab_size=vocab_size, **init)
            except ValueError as e:
                raise ConfigError(f"decoder.init: {e}") from None
            hf_cfg._attn_implementation = dec.attn_implementation
            model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=dec.attn_implementation)
        else:
            folder = decoder_folder(dec.path, host)
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), attn_implementation=dec.attn_implementation, trust_remote_code=dec.trust_remote_code,
                dtype=torch.float32,
            )
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size > old:
        _grow_embeddings(model, vocab_size)
    return model


@torch.no_grad()
def _grow_embeddings(model: nn.Module, vocab_size: int) -> None:
    """Add rows for new tokens, set to the mean of the old rows: deterministic, so a checkpoint
    that references the pretrained decoder rebuilds exactly the same model."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    emb = model.get_input_embeddings().weight
    emb[old:] = emb[:old].mean(0)
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != emb.data_ptr():
        out.weight[old:] = out.weight[:old].mean(0)
        if getattr(out, "bias", None) is not None:
            out.bias[old:] = out.bias[:old].mean()


class MultimodalModel(nn.Module):
    """Encoders per modality, the fusion module, the decoder and (for classification) a head."""

    def __init__(self, cfg: FusionConfig, host: Host, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.encoder_specs = {m: host.encoders.get(e.name) for m, e in cfg.encoders.items()}
        self.encoders = nn.ModuleDict({
            m: spec.create(spec.make_config(cfg.encoders[m].config, f"encoders.{m}.config"))
            for m, spec in self.encoder_specs.items()
        })
        self.decoder = build_decoder(cfg, len(tokenizer), host)
        if cfg.training.dropout is not None:
            set_dropout(self.decoder, cfg.training.dropout)
        hidden = int(self.decoder.get_input_embeddings().weight.shape[1])
        self.hidden_size = hidden
        self.fusion = FusionModule(
            cfg.fusion, {m: enc.output_dim for m, enc in self.encoders.items()}, hidden,
            temporal_modalities=[m for m, enc in self.encoders.items() if enc.temporal],
        ) if self.encoders else None
        self.placeholder_ids = {m: tokenizer.convert_tokens_to_ids(placeholder_token(m)) for m in cfg.encoders}
        self.pad_token_id = tokenizer.pad_token_id
        self.head = nn.Linear(hidden, len(cfg.task.labels)) if cfg.task.kind in HEAD_TASKS else None
        if cfg.task.kind == "token_classification":
            if "text" not in self.encoders:
                raise ConfigError("task.kind=token_classification tags words read by a text encoder: add "
                                  "encoders.text (e.g. text/hf)")
            if cfg.fusion.projector_for("text").kind == "resampler":
                raise ConfigError("token classification needs one fused token per text token: the text "
                                  "projector cannot be a resampler (use mlp or linear)")
        self.feature_cache: FeatureCache | None = None
        if cfg.training.lora.enabled:
            apply_lora(self, cfg.training.lora)

    def frozen_modules(self) -> list[nn.Module]:
        """Encoders and decoder marked ``freeze`` in the config: kept in eval mode while training."""
        mods = [self.encoders[m] for m, e in self.cfg.encoders.items() if e.freeze]
        if self.cfg.decoder.freeze:
            mods.append(self.decoder)
        return mods

    def train(self, mode: bool = True) -> "MultimodalModel":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # fixed batch-norm statistics and no dropout: features are reproducible
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_media(self, batch: Batch) -> dict[str, EncoderOutput]:
        """Run each modality's encoder over its preprocessed items, or take them from the feature cache."""
        out = {}
        for m in dict.fromkeys(x for row in batch.item_modalities for x in row):
            if m in batch.media_keys:
                keys = batch.media_keys[m]
                missing = batch.media_missing.get(m, [])
                if missing:
                    with torch.no_grad():
                        self.feature_cache.put([keys[i] for i in missing], self._encode(m, batch, len(missing)))
                out[m] = self.feature_cache.get(keys)
            else:
                out[m] = self._encode(m, batch, sum(row.count(m) for row in batch.item_modalities))
        return out

    def _encode(self, m: str, batch: Batch, n: int) -> EncoderOutput:
        out = self.encoders[m](**batch.media[m])
        check_output(self.encoder_specs[m], self.encoders[m], out, n)
        return out

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(inputs_embeds (B, L', D), attention_mask (B, L'), labels (B, L') or None, ids (B, L'))."""
        ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels
        embed_tokens = self.decoder.get_input_embeddings()
        if not any(batch.item_modalities):
            return embed_tokens(ids), mask, labels, ids
        fused = self.fusion(self.encode_media(batch), make_layout(batch.item_modalities))
        ids, mask, labels = expand_placeholders(ids, mask, labels, self.placeholder_ids, token_counts(fused),
                                                pad_id=self.pad_token_id, padding_side=batch.padding_side)
        embeds = splice(embed_tokens(ids), ids, self.placeholder_ids, fused)  # (B, L', D)
        return embeds, mask, labels, ids

    def forward(self, batch: Batch) -> ModelOutput:
        embeds, mask, labels, ids = self.embed(batch)
        if self.cfg.task.kind == "token_classification":
            return self._tag(batch, embeds, mask, ids)
        if self.head is not None:
            # The base model, without the LM head: no (B, L', vocab) logits to compute.
            hidden = unwrap_peft(self.decoder).base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            logits = self.head(pool(hidden, mask, self.cfg.task.pooling).to(self.head.weight.dtype))  # (B, C)
            loss = None
            if batch.class_labels is not None:
                loss = nn.functional.cross_entropy(logits.float(), batch.class_labels)
            return ModelOutput(loss, logits, embeds, mask)
        if labels is not None and takes_logits_to_keep(self.decoder):
            # Logits only where a next token is scored: the vocabulary projection of a media token or a prompt
            # token is never used (with long prompts and media, most of the sequence).
            keep = labelled_positions(labels)  # (K,)
            logits = self.decoder(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits  # (B, K, V)
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), labels[:, keep + 1].flatten(),
                                               ignore_index=IGNORE_INDEX)
            return ModelOutput(loss, logits, embeds, mask)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask).logits  # (B, L', V)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        return ModelOutput(loss, logits, embeds, mask)


    def _tag(self, batch: Batch, embeds: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor) -> ModelOutput:
        """Token classification: the decoder's hidden state at each slot of the text item (one per text
        token, in order) through the head -> (B, T, n_tags), T as in ``batch.word_index``."""
        hidden = unwrap_peft(self.decoder).base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        slots = ids == self.placeholder_ids["text"]  # (B, L'): the text item's tokens, in order
        rank = slots.long().cumsum(1) - 1  # (B, L'): each slot's token index within the item
        n_tokens = batch.word_index.shape[1]
        tokens = hidden.new_zeros(hidden.shape[0], n_tokens, hidden.shape[-1])  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1).expand_as(slots)
        tokens[rows[slots], rank[slots]] = hidden[slots]
        logits = self.head(tokens.to(self.head.weight.dtype))  # (B, T, C)
        loss = None
        if batch.token_labels is not None:
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.token_labels.flatten(),
                                               ignore_index=IGNORE_INDEX)
        return ModelOutput(loss, logits, embeds, mask)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> the positions p (1-D, ascending) whose next token ``labels[:, p + 1]`` is scored in some
    row of the batch: the only positions whose logits the causal LM loss reads."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def takes_logits_to_keep(decoder: nn.Module) -> bool:
    """Whether the decoder's forward computes logits for chosen positions only (``logits_to_keep``, as the
    Hugging Face causal LMs of transformers 5 do); a peft wrapper's forward passes it on."""
    return "logits_to_keep" in inspect.signature(unwrap_peft(decoder).forward).parameters


def unwrap_peft(module: nn.Module) -> nn.Module:
    """The model inside a peft wrapper (its LoRA layers stay active), or the module itself."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def set_dropout(decoder: nn.Module, p: float) -> None:
    """Set every dropout probability of a Hugging Face decoder (layers and attention) to ``p``."""
    for module in decoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(decoder.config, name):
            setattr(decoder.config, name, p)


def apply_lora(model: "MultimodalModel", lora) -> None:
    """Wrap the decoder (and the chosen encoders) with peft LoRA adapters; base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.decoder.named_modules()}
    targets = [t for t in lora.target_modules if t in names]
    if not targets:
        raise ConfigError(f"training.lora.target_modules={lora.target_modules} match no layer of the decoder; "
                          f"its layer names include {sorted(names)[:12]}")
    peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                          fan_in_fan_out=model.decoder.config.model_type == "gpt2")
    model.decoder = get_peft_model(model.decoder, peft_cfg)
    for m in lora.encoders:
        if m not in model.encoders:
            raise ConfigError(f"training.lora.encoders names {m!r}, which is not a configured modality")
        enc = model.encoders[m]
        layers = [n for n, mod in enc.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d)) and n]
        enc_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=layers)
        from peft import inject_adapter_in_model

        inject_adapter_in_model(enc_cfg, enc)
        for n, p in enc.named_parameters():
            p.requires_grad = "lora_" in n


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, D) hidden states -> (B, D): the last real token's (any padding side) or the masked mean."""
    if how == "mean":
        w = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy over the positions whose label is not -100."""
    shift_logits = logits[:, :-1].float()  # (B, L-1, V)
    shift_labels = labels[:, 1:]  # (B, L-1)
    return nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX)

