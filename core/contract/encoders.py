"""The one interface every modality encoder meets, and the spec a plugin registers it with."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from mmassist.core import schema
from mmassist.core.errors import ConfigError, PluginError, UndecodableInputError, UnsupportedInputError
from mmassist.core.contract.media import SNIFF_BYTES, Media, mime_matches

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*/[a-z0-9][a-z0-9_.-]*$")


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    ``features``: (B, T, D) with D = the encoder's ``output_dim``.
    ``mask``: (B, T) bool, True for real tokens (inputs of different lengths are right-padded).
    ``time_index``: (B, T) long, the frame each token came from (video), or None.
    ``pooled``: (B, D) one vector per input, or None.
    """

    features: torch.Tensor
    mask: torch.Tensor
    time_index: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class Encoder(nn.Module):
    """Base class of modality encoders.

    A subclass sets ``self.config`` and ``self.output_dim`` in ``__init__`` and implements
    ``preprocess`` (raw inputs -> a dict of CPU tensors for one batch) and ``forward`` (that dict,
    on the model's device -> :class:`EncoderOutput`). Preprocessing is separate from ``forward`` so
    it can run in data-loader workers and its output can be cached.
    """

    config: Any
    output_dim: int
    # True when outputs carry a time_index (video): the fusion module then adds temporal embeddings.
    temporal: bool = False
    # Where frozen weights can be reloaded from (a local folder or weights file), or None when
    # the weights exist only in memory (random init or trained): checkpoints then copy them.
    pretrained_source: str | None = None

    def preprocess(self, items: Sequence[Media]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def preprocess_words(self, sentences: Sequence[Sequence[str]]) -> tuple[dict[str, torch.Tensor],
                                                                              list[list[int | None]]]:
        """Optional, for token classification: sentences already split into words -> ``preprocess``'s batch
        and, for each sentence, the index of the word each output token comes from (None for tokens of no
        word: special tokens, padding), in the order of ``forward``'s features. Words that do not fit
        (truncation) have no token. A text encoder over a Hugging Face tokenizer reads its
        ``is_split_into_words`` output's ``word_ids``."""
        raise UnsupportedInputError(f"{type(self).__name__} cannot read sentences split into words, which "
                                    "token classification needs (it implements no preprocess_words)")

    def forward(self, **batch: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def encode(self, items: Sequence[Any]) -> EncoderOutput:
        """Preprocess raw inputs (paths, bytes, PIL images, text) and run the encoder on them."""
        media = [Media.of(x) for x in items]
        batch = self.preprocess(media)
        return self(**{k: v.to(self.device) for k, v in batch.items()})


@dataclass(frozen=True)
class EncoderSpec:
    """What a plugin registers: a named encoder, the inputs it accepts and how to build it.

    ``name`` is ``<modality>/<backend>`` (``image/timm``). ``mime_types`` may use wildcards
    (``image/*``). ``extensions`` (``(".csv", ".npy")``) and ``magic`` (byte prefixes of the content,
    ``(b"\\x93NUMPY",)``) declare file types the system's MIME table may not know: a file with one of
    these endings, or whose first bytes start with one of these prefixes, is this encoder's before any
    MIME match (see :meth:`accepts`), in chat, captioning, data files and the web app's uploads alike.
    ``build(config)`` must be lazy: heavy imports happen there, not at plugin import.
    ``tiny_config()`` returns a small config for tests; ``example_inputs(tmp_dir)`` returns two or
    more real inputs (paths, bytes...) that the contract test in :mod:`mmassist.core.contract.testing` encodes.
    ``initial_weights`` names the config keys that only say where the encoder's first weights come from
    (a local weights file, a "download pretrained" flag), at any depth of the config, with the value that
    builds it without them: a checkpoint holding all of the encoder's trained weights is then loaded with
    those keys reset, so it loads where that file is not.
    ``plugin``, ``distribution`` and ``version`` are filled in by the host.
    """

    name: str
    modality: str
    mime_types: tuple[str, ...]
    config_cls: type
    build: Callable[[Any], Encoder]
    description: str = ""
    tiny_config: Callable[[], Any] | None = None
    example_inputs: Callable[[Path], list[Any]] | None = None
    initial_weights: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extensions: tuple[str, ...] = ()
    magic: tuple[bytes, ...] = ()
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    def __post_init__(self):
        if not _NAME_RE.match(self.name):
            raise PluginError(f"encoder name {self.name!r} must look like 'modality/backend' in lower case")
        if self.name.split("/", 1)[0] != self.modality:
            raise PluginError(f"encoder {self.name!r} must start with its modality {self.modality!r}")
        if not self.mime_types or isinstance(self.mime_types, str):
            raise PluginError(f"encoder {self.name!r}: mime_types must be a non-empty tuple of MIME types")
        if not dataclasses.is_dataclass(self.config_cls):
            raise PluginError(f"encoder {self.name!r}: config_cls must be a dataclass")
        if isinstance(self.extensions, str) or any(
                not isinstance(e, str) or not re.fullmatch(r"\.[a-z0-9][a-z0-9._-]*", e) for e in self.extensions):
            raise PluginError(f"encoder {self.name!r}: extensions must be a tuple of lower-case file endings "
                              f"with their dot, such as ('.csv', '.npy'); got {self.extensions!r}")
        if isinstance(self.magic, bytes) or any(
                not isinstance(m, bytes) or not 0 < len(m) <= SNIFF_BYTES for m in self.magic):
            raise PluginError(f"encoder {self.name!r}: magic must be a tuple of byte strings of 1 to "
                              f"{SNIFF_BYTES} bytes, such as (b'\\x93NUMPY',); got {self.magic!r}")

    def declares(self, media: Media) -> bool:
        """Whether ``media`` is of a file type this spec declares: its extension or its first bytes."""
        return bool(media.suffix and media.suffix in self.extensions) or \
            any(media.head.startswith(m) for m in self.magic)

    def accepts(self, media: Media) -> bool:
        """Whether this encoder takes ``media``: a declared file type, or a MIME type it accepts."""
        return self.declares(media) or mime_matches(media.mime_type, self.mime_types)

    def make_config(self, data: Any = None, path: str = "") -> Any:
        """The config for this encoder from a dict (unknown keys are errors), a config, or None."""
        if data is None:
            return self.config_cls()
        if isinstance(data, self.config_cls):
            return data
        return schema.from_dict(self.config_cls, data, path or self.name)

    def create(self, config: Any = None) -> Encoder:
        """Build the encoder. Errors from a plugin's build become PluginError naming the plugin."""
        cfg = self.make_config(config)
        try:
            encoder = self.build(cfg)
        except (ConfigError, UndecodableInputError, PluginError):
            raise
        except Exception as e:
            raise PluginError(
                f"encoder {self.name!r} (plugin {self.plugin or '?'}, {self.distribution or '?'} "
                f"{self.version}) failed to build: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(encoder, Encoder) or not isinstance(getattr(encoder, "output_dim", None), int):
            raise PluginError(f"encoder {self.name!r}: build() must return an Encoder with an int output_dim")
        return encoder


def check_output(spec: EncoderSpec, encoder: Encoder, out: Any, batch_size: int) -> None:
    """The shape contract of an encoder's output for ``batch_size`` inputs, checked on every forward pass
    of a model: a mistake is a :class:`PluginError` naming the encoder and the distribution it comes from,
    not a shape error deep inside the fusion module."""
    who = f"encoder {spec.name!r} (plugin {spec.plugin or '?'}, {spec.distribution or '?'} {spec.version})".rstrip()

    def fail(problem: str) -> None:
        raise PluginError(f"{who} broke the encoder contract: {problem}. Fix the plugin, or ask its authors "
                          "to (run mmassist.core.contract.testing.check_encoder on it)")

    if not isinstance(out, EncoderOutput):
        fail(f"forward() must return an EncoderOutput, not {type(out).__name__}")
    features, width = out.features, encoder.output_dim
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        fail(f"features must be a (B, T, D) tensor, got {tuple(getattr(features, 'shape', ())) or type(features)}")
    b, t, d = features.shape
    if b != batch_size:
        fail(f"features has {b} rows for {batch_size} inputs")
    if d != width:
        hint = " (it looks like (B, D, T): transpose it to (B, T, D))" if t == width else ""
        fail(f"features is {tuple(features.shape)}, its last dimension must be output_dim={width}{hint}")
    mask = out.mask
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, t) or mask.dtype != torch.bool:
        fail(f"mask must be a bool tensor of shape (B, T) = {(b, t)}, got "
             f"{getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}")


def pad_sequences(seqs: Sequence[torch.Tensor], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (T_i, ...) tensors to (B, T_max, ...) and return them with a (B, T_max) bool mask."""
    t_max = max(s.shape[0] for s in seqs)
    out = seqs[0].new_full((len(seqs), t_max, *seqs[0].shape[1:]), pad_value)
    mask = torch.zeros(len(seqs), t_max, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask
