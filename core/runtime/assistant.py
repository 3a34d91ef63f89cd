"""``Assistant``: the user-facing model. Chat, caption, classify, save and load."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from mmassist.core.runtime.checkpoint import load_weights, read_checkpoint, save_checkpoint, without_initial_weights
from mmassist.core.runtime.config import FusionConfig, GenerationConfig
from mmassist.core.hf import quiet_transformers
from mmassist.core.errors import ConfigError, UnsupportedInputError
from mmassist.core.runtime.generate import cut_at_stop, generate_ids, held_back
from mmassist.core.contract.host import Host
from mmassist.core.contract.media import looks_like_a_file_name, media_file
from mmassist.core.runtime.model import MultimodalModel, build_tokenizer_for, placeholder_token
from mmassist.core.runtime.processor import Encoded, Processor, caption_prompt
from mmassist.core.runtime.tags import entity_spans, split_words, word_tags



def merge_lora_layers(module: torch.nn.Module) -> None:
    """Merge every peft LoRA layer inside ``module`` into its base layer, and put the base layer back."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 or AMX, through oneDNN). Without it
    PyTorch falls back to a plain loop: a bf16 matrix product takes about 90x the float32 time (AVX2 CPU)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: bf16 on CUDA, float32 on CPU, unless given. bfloat16 asked for on a CPU without
    native bf16 (:func:`cpu_has_bf16`) gives float32, with a warning: there it would be far slower."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                     "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ConfigError(f"dtype={dtype!r}; choose float32, bfloat16 or float16") from None
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("bfloat16 was asked for, but this CPU has no native bfloat16 (AVX-512 or AMX): its bf16 "
                      "matrix products would take about 90x the float32 time; computing in float32", stacklevel=2)
        return torch.float32
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; weights stay in float32 so they can be trained."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Assistant:
    """A fused multimodal model with its tokenizer, ready to chat, caption or classify."""

    def __init__(self, model: MultimodalModel, tokenizer, cfg: FusionConfig, host: Host, *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
        self.cfg = cfg
        self.host = host
        self.tokenizer = tokenizer
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        self.processor = Processor(tokenizer, model.encoders, cfg.decoder.max_length, cfg.task.system_prompt,
                                   cfg.task.encode_user_text)
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        self.eos_ids = [i for i in (tokenizer.eos_token_id, end_of_turn) if i is not None]
        # Never generate a placeholder: its embedding is only a slot for media features.
        self.banned_ids = list(model.placeholder_ids.values())

    # -- building and saving ------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: FusionConfig | Mapping | str | Path, *, host: Host | None = None,
                    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "Assistant":
        """A new, untrained assistant (pretrained parts loaded as the config says)."""
        cfg = FusionConfig.coerce(cfg)
        host = host or Host()
        tokenizer = build_tokenizer_for(cfg, host)
        model = MultimodalModel(cfg, host, tokenizer)
        return cls(model, tokenizer, cfg, host, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, host: Host | None = None,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "Assistant":
        """Load a checkpoint folder written by :meth:`save_pretrained` or ``core.finetune``, or
        a model name a plugin registered (:meth:`Host.model_folder`), such as ``"starter"``. A registered
        decoder's name (``"smollm2-135m-instruct"``) gives that pretrained LM alone, untrained, text only."""
        from transformers import AutoTokenizer
        host = host or Host()
        source = host.model_source(path)
        if source is not None and source.kind == "decoder":  # the pretrained LM alone, as a text assistant
            return cls.from_config({"decoder": {"path": source.name}}, host=host, device=device, dtype=dtype)
        path = host.model_folder(path)
        cfg, manifest = read_checkpoint(path, host)
        cfg = without_initial_weights(cfg, manifest, host)
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = MultimodalModel(cfg, host, tokenizer)
        load_weights(model, path)
        return cls(model, tokenizer, cfg, host, device=device, dtype=dtype)

    def merged(self) -> "Assistant":
        """This model with its LoRA adapters merged into the weights: a plain model, the same outputs.

        Save the result with :meth:`save_pretrained` to export a checkpoint that needs no peft.
        """
        lora = self.cfg.training.lora
        if not lora.enabled:
            return self
        model = copy.deepcopy(self.model)
        model.decoder = model.decoder.merge_and_unload()
        for m in lora.encoders:
            merge_lora_layers(model.encoders[m])
        cfg = dataclasses.replace(
            self.cfg,
            decoder=dataclasses.replace(self.cfg.decoder, freeze=False),
            encoders={m: dataclasses.replace(e, freeze=False, trainable=[]) if m in lora.encoders else e
                      for m, e in self.cfg.encoders.items()},
            training=dataclasses.replace(self.cfg.training, lora=dataclasses.replace(lora, enabled=False, encoders=[])),
        )
        model.cfg = cfg
        return Assistant(model, self.tokenizer, cfg, self.host, device=self.device, dtype=self.dtype)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config.json, model.safetensors, the tokenizer and manifest.json to ``path``."""
        return save_checkpoint(self.model, self.tokenizer, self.cfg, path, self.host)

    # -- chat ---------------------------------------------------------------------------------

    def chat(self, prompt: str | Sequence[Mapping[str, Any]], *, images: Sequence[Any] = (), videos: Sequence[Any] = (),
             media: Sequence[Any] = (), stream: bool = False, **generation: Any) -> str | Iterator[str]:
        """Answer a prompt or continue a conversation.

        :param prompt: a string, or messages (OpenAI style with typed content parts, or LLaVA style).
        :param images: images for the last user turn (paths, bytes, PIL images).
        :param videos: videos for the last user turn (paths or bytes).
        :param media: inputs of any modality the model takes, routed to an encoder by their content.
        :param stream: return an iterator of text pieces instead of the whole answer.
        :param generation: overrides of :class:`mmassist.core.runtime.config.GenerationConfig` (temperature, top_p...).
        """
        gen = self._generation(generation)
        by_modality = self._group_media(images=images, videos=videos, media=media)
        conv = self.processor.conversation(prompt, by_modality)
        encoded = self.processor.encode(conv, add_generation_prompt=True)
        if not stream and not gen.stop:  # nothing to check while generating: decode once at the end
            return self.generate_batch([encoded], gen)[0]
        pieces = self._stream([encoded], gen)
        return pieces if stream else "".join(pieces)

    def _group_media(self, **kinds: Sequence[Any]) -> dict[str, list[Any]]:
        grouped: dict[str, list[Any]] = {"image": list(kinds["images"] or []), "video": list(kinds["videos"] or [])}
        candidates = [e.name for e in self.cfg.encoders.values()]
        for item in kinds["media"] or []:
            spec, m = self.host.route(item, candidates=candidates)
            grouped.setdefault(spec.modality, []).append(m)
        return {k: v for k, v in grouped.items() if v}

    def _generation(self, overrides: Mapping[str, Any]) -> GenerationConfig:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(GenerationConfig)}
        if unknown:
            raise ConfigError(f"unknown generation option(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(f.name for f in dataclasses.fields(GenerationConfig))}")
        return dataclasses.replace(self.cfg.generation, **overrides)

    def _stream(self, encoded, gen: GenerationConfig) -> Iterator[str]:
        """Generate for one example and yield text pieces as they become final."""
        batch = self.processor.collate(encoded, padding_side="left").to(self.device)
        tokens: list[int] = []
        emitted = 0
        with autocast(self.device, self.dtype):
            for token in generate_ids(self.model, batch, gen, eos_ids=self.eos_ids, banned_ids=self.banned_ids):
                t = int(token[0])
                if t in self.eos_ids:
                    break
                tokens.append(t)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                text, stopped = cut_at_stop(text, gen.stop)
                if stopped:
                    yield text[emitted:]
                    return
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                safe = len(text) - held_back(text, gen.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
        text = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), gen.stop)[0]
        if len(text) > emitted:
            yield text[emitted:]

    def generate_batch(self, encoded: Sequence[Encoded], gen: GenerationConfig | None = None) -> list[str]:
        """Answers to already encoded prompts (:meth:`Processor.encode` with ``add_generation_prompt=True``),
        generated together in one left-padded batch, greedy or sampled as ``gen`` (default: the model's) says."""
        gen = gen or self.cfg.generation
        batch = self.processor.collate(encoded, padding_side="left").to(self.device)
        rows: list[list[int]] = [[] for _ in encoded]
        done = [False] * len(encoded)
        with autocast(self.device, self.dtype):
            for token in generate_ids(self.model, batch, gen, eos_ids=self.eos_ids, banned_ids=self.banned_ids):
                for i, t in enumerate(token.tolist()):
                    if done[i] or t in self.eos_ids:
                        done[i] = True
                    else:
                        rows[i].append(t)
        return [cut_at_stop(self.tokenizer.decode(r, skip_special_tokens=True), gen.stop)[0] for r in rows]

    # -- tasks --------------------------------------------------------------------------------

    def caption(self, items: Any, *, prompt: str | None = None, batch_size: int = 8,
                **generation: Any) -> str | list[str]:
        """Caption one input (returns a string) or a list of inputs (returns a list, batched)."""
        single = not isinstance(items, (list, tuple))
        items = [items] if single else list(items)
        gen = self._generation(generation)
        candidates = [e.name for e in self.cfg.encoders.values()]
        encoded = []
        for item in items:
            if looks_like_a_file_name(item):  # meant as a file: a missing one is an error, not text to caption
                media_file(item)
            spec, media = self.host.route(item, candidates=candidates)
            text = prompt or self.cfg.task.prompt or caption_prompt(spec.modality)
            if placeholder_token(spec.modality) not in text:
                text = f"{placeholder_token(spec.modality)}\n{text}"
            conv = self.processor.conversation(text, {spec.modality: [media]})
            encoded.append(self.processor.encode(conv, add_generation_prompt=True))
        out = []
        for i in range(0, len(encoded), batch_size):
            out.extend(self.generate_batch(encoded[i: i + batch_size], gen))
        return out[0] if single else out

    @torch.no_grad()
    def classify(self, items: Any, *, return_scores: bool = False) -> Any:
        """The label of one input (a text, an image...) or of each input of a list."""
        self._require_task("classification")
        single = not isinstance(items, (list, tuple))
        items = [items] if single else list(items)
        encoded = [self.processor.encode(self.classification_conversation(x), add_generation_prompt=True)
                   for x in items]
        batch = self.processor.collate(encoded).to(self.device)
        with autocast(self.device, self.dtype):
            probs = self.model(batch).logits.float().softmax(-1).cpu()
        labels = self.cfg.task.labels
        out = [
            {labels[j]: float(p[j]) for j in range(len(labels))} if return_scores else labels[int(p.argmax())]
            for p in probs
        ]
        return out[0] if single else out

    @torch.no_grad()
    def tag(self, words: str | Sequence[str]) -> list[str] | list[dict[str, Any]]:
        """Named entities, with a token classification model. Given a list of words: one tag per word
        (``O``, ``B-PER``...). Given a text: its entities, ``{"entity": "PER", "text": "Ada Lovelace",
        "start": 0, "end": 12}`` with character offsets into the text (words split off at spaces and
        punctuation by :func:`mmassist.core.runtime.tags.split_words`)."""
        self._require_task("token_classification")
        if isinstance(words, str):
            found = split_words(words)
            tags = self._tag_words([w for w, _, _ in found])
            return [{"entity": kind, "text": words[found[a][1]:found[b - 1][2]], "start": found[a][1],
                     "end": found[b - 1][2]} for kind, a, b in entity_spans(tags)]
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            raise UnsupportedInputError(f"tag() takes a text or a list of words (strings), not {type(words).__name__}")
        return self._tag_words(list(words))

    def _require_task(self, kind: str) -> None:
        """A ConfigError naming the method that suits this model, unless it was trained for ``kind``."""
        own = self.cfg.task.kind
        if own != kind:
            use = {"classification": "classify()", "token_classification": "tag()"}.get(own, "chat() or caption()")
            raise ConfigError(f"this model was trained for {own}, not {kind.replace('_', ' ')}; use {use}")

    def _tag_words(self, words: list[str]) -> list[str]:
        """A tag per word; a sentence longer than the text encoder takes is tagged in consecutive parts."""
        tags: list[str] = []
        while words:
            batch = self.processor.collate([self.processor.encode_words(self.cfg.task.prompt, words)]).to(self.device)
            with autocast(self.device, self.dtype):
                logits = self.model(batch).logits
            got = word_tags(logits, batch.word_index, [len(words)], self.cfg.task.labels, missing=None)[0]
            fitted = next((i for i, t in enumerate(got) if t is None), len(got))
            if fitted == 0:
                raise UnsupportedInputError(f"the word {words[0][:40]!r} is longer than the text encoder's "
                                            f"max_length; split it")
            tags += got[:fitted]
            words = words[fitted:]
        return tags

    def classification_conversation(self, item: Any):
        """The prompt a classifier sees for one input (:meth:`Processor.classification_conversation`):
        a string inline when the model has no text encoder, else the input routed to its encoder."""
        prompt = self.cfg.task.prompt
        candidates = [e.name for e in self.cfg.encoders.values()]
        if isinstance(item, str) and "text" not in self.cfg.encoders and not Path(item).is_file():
            return self.processor.classification_conversation(prompt, text=item)
        if not candidates:
            raise UnsupportedInputError("this classifier reads text only; give a string")
        spec, media = self.host.route(item, candidates=candidates)
        return self.processor.classification_conversation(prompt, item=(spec.modality, media))
