"""``FusionConfig``: everything a model and its fine-tune need, as nested dataclasses.

    encoders:   {modality: EncoderConfig}   which plugin encoder reads each modality
    fusion:     FusionModuleConfig          projectors, embeddings, joint layers (fusion/config.py)
    decoder:    DecoderConfig               the causal LM and its tokenizer
    task:       TaskConfig                  chat / caption / vqa / classification
    generation: GenerationConfig            decoding defaults
    data:       DataConfig                  where the train / validation / test data are
    training:   TrainingConfig              optimisation and evaluation settings

Configs are values: validated on construction, unknown keys rejected with their path, JSON/YAML
round trip, and never mutated by the functions they are given (use ``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmassist.core import schema
from mmassist.core.schema import check_choice, check_range, help_field, yaml_load
from mmassist.core.errors import ConfigError
from mmassist.core.runtime.tags import check_tag
from mmassist.fusion.config import FusionModuleConfig, check_modality_name

TASKS = ("chat", "caption", "vqa", "classification", "token_classification")


def in_part(name: str, part: str) -> bool:
    """Whether the parameter ``name`` is ``part`` or lies inside it (``part.``...)."""
    return name == part or name.startswith(part + ".")


@dataclass
class EncoderConfig:
    """One modality's encoder: a registered encoder name and its own config values."""

    name: str = help_field(help="registered encoder name, e.g. image/timm (see `mmassist plugins`)")
    config: dict[str, Any] = help_field(default_factory=dict, help="the encoder's config values")
    freeze: bool = help_field(False, help="keep the encoder's weights fixed during fine-tuning")
    lr: float | None = help_field(None, help="learning rate for this encoder; default: training.lr")
    trainable: list[str] = help_field(
        default_factory=list,
        help="with freeze: the parameters still trained, by name or name prefix within the encoder (e.g. "
             "model.encoder.layer.5 for a text encoder's top layer): frozen-part fine-tuning. They are saved "
             "in checkpoints; the rest of a pretrained encoder stays referenced")

    def __post_init__(self):
        if not isinstance(self.name, str) or "/" not in self.name:
            raise ConfigError(f"encoder name {self.name!r} must look like 'modality/backend', e.g. 'image/timm'")
        if self.lr is not None:
            check_range("encoder.lr", self.lr, 0.0, lo_open=True)
        if not isinstance(self.trainable, list) or not all(isinstance(p, str) and p for p in self.trainable):
            raise ConfigError(f"encoder.trainable must be a list of parameter names, got {self.trainable!r}")
        if self.trainable and not self.freeze:
            raise ConfigError(f"{self.name}: trainable names the parts of a frozen encoder that are still trained; "
                              "set freeze: true with it (without freeze the whole encoder is trained)")

    def trains(self, name: str) -> bool:
        """Whether the encoder's parameter ``name`` is trained: not frozen, or named in :attr:`trainable`."""
        return not self.freeze or any(in_part(name, p) for p in self.trainable)


@dataclass
class DecoderConfig:
    """The autoregressive decoder: a local Hugging Face causal LM, or a new one built from a config."""

    path: str | None = help_field(
        None, help="the pretrained causal LM: a local Hugging Face folder (weights + tokenizer), a .gguf file "
                   "(converted once into the cache), or a registered decoder name such as smollm2-135m-instruct "
                   "(mmassist plugins lists them)")
    init: dict[str, Any] | None = help_field(
        None, help="build a new, randomly initialised decoder from these config values, e.g. "
                   "{model_type: llama, hidden_size: 64, num_hidden_layers: 2, ...}")
    tokenizer: str = help_field(
        "auto", help="auto: the decoder folder's tokenizer; bytes: a byte-level tokenizer (no training); "
                     "or the folder of a tokenizer")
    freeze: bool = help_field(False, help="keep the decoder's weights fixed during fine-tuning")
    lr: float | None = help_field(None, help="learning rate for the decoder; default: training.lr")
    max_length: int = help_field(1024, help="longest sequence (prompt + media tokens + answer) in tokens")
    attn_implementation: str = help_field("sdpa", choices=("sdpa", "eager"),
                                          help="attention kernel: sdpa (fast) or eager (reference)")
    trust_remote_code: bool = help_field(False, help="allow code shipped with the model to run; "
                                                     "only for models you trust")

    def __post_init__(self):
        if (self.path is None) == (self.init is None):
            raise ConfigError("decoder: give exactly one of decoder.path (a local model folder) "
                              "or decoder.init (config values for a new model)")
        if self.init is not None and "model_type" not in self.init:
            raise ConfigError("decoder.init needs a model_type, e.g. llama, qwen2 or gpt2")
        if self.init is not None and self.tokenizer == "auto":
            raise ConfigError("decoder.tokenizer: a new decoder (decoder.init) needs a tokenizer: "
                              "'bytes' or the folder of one")
        check_range("decoder.max_length", self.max_length, 8)
        check_choice("decoder.attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        if self.lr is not None:
            check_range("decoder.lr", self.lr, 0.0, lo_open=True)


@dataclass
class TaskConfig:
    """What the model is fine-tuned to do, and the adapter on top of the decoder."""

    kind: str = help_field("chat", choices=TASKS, help="chat, caption, vqa, classification (a label per input) or "
                                                       "token_classification (a tag per word: named entities)")
    labels: list[str] = help_field(default_factory=list, help="classification: the class names, in order; "
                                                              "token_classification: the tags (O, B-PER, I-PER...), "
                                                              "empty = the tags found in the data")
    prompt: str = help_field("", help="instruction put before each input for caption and classification "
                                      "tasks, e.g. 'Describe the image.'; placeholders are added for the media")
    system_prompt: str | None = help_field(None, help="a system message put before every conversation")
    pooling: str = help_field("last", choices=("last", "mean"),
                              help="classification: pool the last token's or the mean hidden state")
    encode_user_text: bool = help_field(
        False, help="chat/vqa: also read each user turn through the text encoder (a <text> item put before "
                    "it), so a pretrained text encoder such as MiniLM sees what the user writes")

    def __post_init__(self):
        check_choice("task.kind", self.kind, TASKS)
        check_choice("task.pooling", self.pooling, ("last", "mean"))
        if self.kind == "classification" and len(self.labels) < 2:
            raise ConfigError("task.labels: a classification task needs at least two labels")
        if self.kind == "token_classification":
            for tag in self.labels:
                problem = check_tag(tag)
                if problem:
                    raise ConfigError(f"task.labels: {problem}")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"task.labels has duplicates: {self.labels}")


@dataclass
class GenerationConfig:
    """Decoding defaults; every field can be overridden per call."""

    max_new_tokens: int = help_field(64, help="most tokens to generate")
    temperature: float = help_field(0.0, help="0 = greedy; higher = more random")
    top_p: float = help_field(1.0, help="nucleus sampling: keep the smallest set of tokens with this mass")
    top_k: int = help_field(0, help="sample among the k likeliest tokens (0 = all)")
    repetition_penalty: float = help_field(1.0, help="> 1 discourages repeating tokens (the prompt's included)")
    no_repeat_ngram_size: int = help_field(0, help="never repeat a run of this many tokens within an answer "
                                                  "(0 = off); stops loops without penalising repeated words")
    stop: list[str] = help_field(default_factory=list, help="stop when the text ends with one of these")
    seed: int | None = help_field(None, help="seed for sampling; default: random")

    def __post_init__(self):
        check_range("generation.max_new_tokens", self.max_new_tokens, 1, 32768)
        check_range("generation.temperature", self.temperature, 0.0)
        check_range("generation.top_p", self.top_p, 0.0, 1.0, lo_open=True)
        check_range("generation.top_k", self.top_k, 0)
        check_range("generation.repetition_penalty", self.repetition_penalty, 0.0, lo_open=True)
        check_range("generation.no_repeat_ngram_size", self.no_repeat_ngram_size, 0)


@dataclass
class DataConfig:
    """Where the data are. Paths are relative to the config file's folder."""

    train: str | None = help_field(None, help="training data file (JSON/JSONL/CSV/TSV) or captions folder")
    validation: str | None = help_field(None, help="validation data; default: carved from train")
    test: str | None = help_field(None, help="test data; default: carved from train when test_fraction > 0")
    validation_fraction: float = help_field(0.1, help="share of train held out for validation when "
                                                      "no validation file is given")
    test_fraction: float = help_field(0.0, help="share of train held out for testing when no test file is given")
    seed: int = help_field(0, help="seed of the split")
    text_column: str = help_field("sentence", help="classification: the column with the text or media path")
    label_column: str = help_field("label", help="classification: the column with the label")

    def __post_init__(self):
        check_range("data.validation_fraction", self.validation_fraction, 0.0, 0.9)
        check_range("data.test_fraction", self.test_fraction, 0.0, 0.9)


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) instead of full fine-tuning of the decoder (and optionally encoders)."""

    enabled: bool = help_field(False, help="train LoRA adapters on the decoder instead of its weights")
    r: int = help_field(8, help="adapter rank")
    alpha: int = help_field(16, help="adapter scaling (lora_alpha)")
    dropout: float = help_field(0.05, help="dropout on the adapter input")
    target_modules: list[str] = help_field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "c_proj"],
        help="names of the decoder's linear layers to adapt (those present are used)")
    encoders: list[str] = help_field(default_factory=list,
                                     help="modalities whose encoders also get adapters (their Linear/Conv layers)")

    def __post_init__(self):
        check_range("training.lora.r", self.r, 1)
        check_range("training.lora.alpha", self.alpha, 1)
        check_range("training.lora.dropout", self.dropout, 0.0, 1.0)


PRECISIONS = ("auto", "float32", "bfloat16")
METRICS = ("loss", "accuracy", "macro_f1", "f1", "exact_match", "bleu", "cider_d")
GENERATED_METRICS = ("exact_match", "bleu", "cider_d")  # scored on answers generated during validation


@dataclass
class TrainingConfig:
    """Optimisation, evaluation and checkpointing."""

    epochs: float = help_field(3.0, help="passes over the training data")
    max_steps: int | None = help_field(None, help="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = help_field(16, help="examples per step per process (global batch = this x processes)")
    grad_accum: int = help_field(1, help="accumulate gradients over this many batches per optimizer step")
    lr: float = help_field(1e-4, help="peak learning rate (AdamW)")
    lr_fusion: float | None = help_field(None, help="learning rate of the fusion module; default: lr")
    lr_head: float | None = help_field(None, help="learning rate of the classification head; default: lr")
    weight_decay: float = help_field(0.01, help="AdamW weight decay (not applied to norms, biases, embeddings)")
    betas: list[float] = help_field(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    warmup_ratio: float = help_field(0.05, help="share of steps spent warming the learning rate up")
    scheduler: str = help_field("cosine", choices=("cosine", "linear", "constant"),
                                help="learning-rate decay after warm-up")
    max_grad_norm: float | None = help_field(1.0, help="clip the gradient norm to this (empty = no clipping)")
    dropout: float | None = help_field(None, help="set the decoder's dropout probabilities to this")
    freeze: list[str] = help_field(default_factory=list,
                                   help="parts to keep fixed, by name: fusion, fusion.projectors.image, "
                                        "fusion.joint, head, ... (encoders and decoder have their own freeze)")
    lora: LoraConfig = help_field(default_factory=LoraConfig, help="LoRA adapters (peft)")
    eval_every: int | None = help_field(None, help="evaluate every N optimizer steps (default: each epoch)")
    save_every: int | None = help_field(None, help="write a resumable checkpoint every N steps "
                                                   "(default: at each evaluation)")
    keep_checkpoints: int = help_field(2, help="resumable checkpoints to keep (the newest)")
    metric: str = help_field("auto", choices=("auto",) + METRICS,
                             help="validation metric for early stopping and the best checkpoint; "
                                  "auto: accuracy for classification, entity f1 for token_classification, "
                                  "loss otherwise")
    patience: int | None = help_field(None, help="stop after this many evaluations without improvement")
    eval_generate: int = help_field(64, help="generation tasks: validation examples to generate answers "
                                             "for at each evaluation (0 = loss only)")
    feature_cache: bool = help_field(True, help="compute the features of frozen encoders once and reuse them")
    group_by_length: bool = help_field(True, help="batch examples of similar length (less padding)")
    gradient_checkpointing: bool = help_field(False, help="recompute decoder activations in the backward "
                                                          "pass to save memory")
    compile: bool = help_field(False, help="torch.compile the decoder")
    precision: str = help_field("auto", choices=PRECISIONS,
                                help="compute dtype of the forward pass (weights stay float32): auto = bfloat16 "
                                     "on a GPU, float32 on the CPU; bfloat16 autocast also on a CPU with native bf16 "
                                     "(float32 with a warning on one without)")
    strategy: str = help_field("ddp", choices=("ddp", "fsdp"),
                               help="multi-process training: ddp (replicate) or fsdp (shard the decoder)")
    seed: int = help_field(0, help="random seed")
    log_every: int = help_field(10, help="log the training loss every N steps")

    def __post_init__(self):
        check_range("training.epochs", self.epochs, 0.0, lo_open=True)
        check_choice("training.precision", self.precision, PRECISIONS)
        if self.max_steps is not None:
            check_range("training.max_steps", self.max_steps, 1)
        check_range("training.batch_size", self.batch_size, 1)
        check_range("training.grad_accum", self.grad_accum, 1)
        check_range("training.lr", self.lr, 0.0, lo_open=True)
        for name in ("lr_fusion", "lr_head"):
            if getattr(self, name) is not None:
                check_range(f"training.{name}", getattr(self, name), 0.0, lo_open=True)
        check_range("training.weight_decay", self.weight_decay, 0.0)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"training.betas={self.betas!r} must be two numbers in [0, 1)")
        check_range("training.warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        check_choice("training.scheduler", self.scheduler, ("cosine", "linear", "constant"))
        if self.max_grad_norm is not None:
            check_range("training.max_grad_norm", self.max_grad_norm, 0.0, lo_open=True)
        if self.dropout is not None:
            check_range("training.dropout", self.dropout, 0.0, 1.0)
        for name in ("eval_every", "save_every", "patience"):
            if getattr(self, name) is not None:
                check_range(f"training.{name}", getattr(self, name), 1)
        check_range("training.keep_checkpoints", self.keep_checkpoints, 1)
        check_choice("training.metric", self.metric, ("auto",) + METRICS)
        check_range("training.eval_generate", self.eval_generate, 0)
        if self.metric in GENERATED_METRICS and self.eval_generate == 0:
            raise ConfigError(f"training.metric={self.metric!r} scores generated answers, but "
                              "training.eval_generate=0 generates none; set eval_generate > 0 or metric: loss")
        check_choice("training.strategy", self.strategy, ("ddp", "fsdp"))
        check_range("training.log_every", self.log_every, 1)


@dataclass
class FusionConfig:
    """The whole model and its fine-tune. Build it from a file, a dict or keyword arguments."""

    encoders: dict[str, EncoderConfig] = help_field(
        default_factory=dict, help="one encoder per input modality: {image: {name: image/timm, config: {...}}}")
    decoder: DecoderConfig = help_field(default_factory=lambda: DecoderConfig(path=None, init={
        "model_type": "llama"}, tokenizer="bytes"), help="the causal LM that writes the answers")
    fusion: FusionModuleConfig = help_field(default_factory=FusionModuleConfig,
                                            help="projectors, embeddings and joint layers between them")
    task: TaskConfig = help_field(default_factory=TaskConfig, help="what to fine-tune for")
    generation: GenerationConfig = help_field(default_factory=GenerationConfig, help="decoding defaults")
    data: DataConfig = help_field(default_factory=DataConfig, help="datasets")
    training: TrainingConfig = help_field(default_factory=TrainingConfig, help="optimisation")

    def __post_init__(self):
        for modality, enc in self.encoders.items():
            check_modality_name("encoders", modality)
            if not isinstance(enc, EncoderConfig):
                raise ConfigError(f"encoders.{modality} must be an encoder config, got {enc!r}")
            if enc.name.split("/", 1)[0] != modality:
                raise ConfigError(f"encoders.{modality}.name={enc.name!r} is an encoder for another modality")
        for modality in self.fusion.modality_projectors:
            if modality not in self.encoders:
                raise ConfigError(f"fusion.modality_projectors.{modality}: no encoder for modality {modality!r}; "
                                  f"encoders: {', '.join(self.encoders) or 'none'}")

    # -- round trip ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FusionConfig":
        """Build from a plain dict; unknown keys raise ConfigError naming their path."""
        return schema.from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path) -> "FusionConfig":
        """Read a YAML or JSON file. Relative data paths are resolved against the file's folder."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            line = e.object.count(b"\n", 0, e.start) + 1
            raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}); "
                              "save the file as UTF-8") from None
        data = load_yaml_or_json(text, path)
        cfg = cls.from_dict(data)
        return dataclasses.replace(cfg, data=_resolve_data_paths(cfg.data, path.parent))

    @classmethod
    def coerce(cls, cfg: "FusionConfig | dict | str | Path") -> "FusionConfig":
        """A FusionConfig from a config, a dict or a file path."""
        if isinstance(cfg, FusionConfig):
            return cfg
        if isinstance(cfg, dict):
            return cls.from_dict(cfg)
        if isinstance(cfg, (str, Path)):
            return cls.from_file(cfg)
        raise ConfigError(f"a config must be a FusionConfig, a dict or a file path, not {type(cfg).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return schema.to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text, encoding="utf-8")

    def override(self, **changes: Any) -> "FusionConfig":
        """A copy with dotted keys replaced: ``cfg.override(**{"training.lr": 1e-3})``."""
        data = self.to_dict()
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"cannot override {dotted}: {key!r} is not a section of the config")
                node = node[key]
            node[last] = value
        return FusionConfig.from_dict(data)

    def differences(self, other: "FusionConfig") -> list[str]:
        """The dotted names of the fields whose values differ between two configs (sections compared field by
        field), sorted."""
        def flat(node: Any, prefix: str = "") -> dict[str, Any]:
            if not isinstance(node, dict):
                return {prefix: node}
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()} \
                if node else {prefix: node}

        a, b = flat(self.to_dict()), flat(other.to_dict())
        return sorted(k.rstrip(".") for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def load_yaml_or_json(text: str, path: Path) -> Any:
    """Parse a config file's text, with errors that give the file and line."""
    import yaml

    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        except (ValueError, RecursionError) as e:  # a number of over 4300 digits, nesting too deep
            raise ConfigError(f"{path}: invalid JSON: {_parse_limit(e)}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: invalid YAML: {_parse_limit(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, got {type(data).__name__}")
    return data


def _parse_limit(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "lists or mappings nested too deeply to read"
    return str(error).split(";")[0]


def _resolve_data_paths(data: DataConfig, base: Path) -> DataConfig:
    changes = {}
    for key in ("train", "validation", "test"):
        value = getattr(data, key)
        # bundled:<dataset>/<file> names the project's generated data, not a file beside the config.
        if value is not None and not value.startswith("bundled:") and not Path(value).is_absolute():
            changes[key] = str((base / value).resolve())
    return dataclasses.replace(data, **changes)
