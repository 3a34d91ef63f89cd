"""From what a user gives (a prompt or messages, and media) to model inputs.

Conversations come in three shapes, all turned into one: a plain string; OpenAI-style ``messages``
whose ``content`` is a string or a list of typed parts (``{"type": "image", "image": path}``);
LLaVA-style turns (``{"from": "human", "value": "<image>\\nWhat is this?"}``). Media given as
keyword arguments (``images=[...]``) belong to the last user turn and get placeholders there when
the text has none, as in LLaVA.

Only the assistant's tokens are learned: the chat template is rendered once, and the character
spans of the assistant turns (found by rendering prefixes) are mapped to tokens through the fast
tokenizer's offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import torch

from mmassist.core.contract.encoders import Encoder
from mmassist.core.errors import ConfigError, PromptTooLongError, UnsupportedInputError
from mmassist.core.runtime.feature_cache import FeatureCache, content_key
from mmassist.core.contract.media import Media, media_file, text_media
from mmassist.core.runtime.model import Batch, placeholder_token
from mmassist.fusion import IGNORE_INDEX

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system", "bot": "assistant", "model": "assistant"}


def part_kind(part_type: Any) -> Any:
    """The modality an OpenAI-style content part's ``type`` names: ``image_url`` and ``input_image`` read as
    ``image``, and likewise ``<modality>_url`` and ``input_<modality>`` for every modality (``video_url``
    is vLLM's convention); any other type is itself."""
    if isinstance(part_type, str):
        if part_type.endswith("_url") and len(part_type) > 4:
            return part_type[:-4]
        if part_type.startswith("input_") and len(part_type) > 6:
            return part_type[6:]
    return part_type


def content_parts(content: Sequence[Any], media_kinds: Collection[str] | None = None) -> list[tuple[str, Any]]:
    """An OpenAI-style list of content parts as ``(kind, value)`` in order: ``("text", its text)`` or
    ``(modality, the path, URL or bytes it names)`` for a media part (``{"type": "image", "image": ...}``,
    ``image_url``, ``input_<modality>``... read as their modality, :func:`part_kind`). The one reader of
    content parts: chat prompts (:meth:`Processor.conversation`) and data files (:mod:`mmassist.core.data`).

    :param media_kinds: the modalities a part may name (None: any); any other part is an error.
    :raises UnsupportedInputError: for a part that is not text or one of ``media_kinds``.
    """
    out = []
    for part in content:
        kind = part_kind(part.get("type")) if isinstance(part, Mapping) else None
        if kind == "text":
            out.append(("text", part.get("text", "")))
        elif isinstance(kind, str) and kind and (media_kinds is None or kind in media_kinds):
            value = next((part[k] for k in (part.get("type"), kind, "url", "path", "data") if k in part), None)
            if isinstance(value, Mapping):  # {"image_url": {"url": ...}}
                value = value.get("url", value.get("path"))
            out.append((kind, value))
        else:
            kinds = ", ".join(media_kinds) if media_kinds is not None else "a modality"
            raise UnsupportedInputError(f"unknown content part {part!r:.120}; parts are text or {kinds} "
                                        "(also as <modality>_url or input_<modality>)")
    return out


def join_parts(pieces: Sequence[tuple[str, str]]) -> str:
    """A turn's text from ``(kind, text)`` pieces in order (a media piece's text is its placeholder): a
    placeholder followed by text gets a line break between them, as LLaVA writes ``<image>\nWhat is it?``,
    so that ``[image part, text part]`` reads the same as a LLaVA-style turn (and as a caption prompt)."""
    out: list[str] = []
    for i, (kind, text) in enumerate(pieces):
        out.append(text)
        following = pieces[i + 1] if i + 1 < len(pieces) else None
        if kind != "text" and following is not None and following[0] == "text" and \
                not following[1].startswith(("\n", " ")):
            out.append("\n")
    return "".join(out)


CAPTION_PROMPT = "Describe this {modality}."


def caption_prompt(modality: str) -> str:
    """The prompt a caption is asked with when the task gives none: the caption readers, the bundled
    captions, :meth:`mmassist.core.Assistant.caption` and the web app all use this one."""
    return CAPTION_PROMPT.format(modality=modality)


@dataclass
class Conversation:
    """Messages with placeholders in their text, and each modality's items in prompt order."""

    messages: list[dict[str, str]]
    items: dict[str, list[Media]] = field(default_factory=dict)


@dataclass
class Encoded:
    """One tokenized example, before batching."""

    input_ids: list[int]
    labels: list[int] | None
    items: dict[str, list[Media]]
    item_modalities: list[str]
    class_label: int | None = None
    # Token classification: the words of the text item, and their tag indices when training.
    words: list[str] | None = None
    tags: list[int] | None = None


class Processor:
    """Tokenizes conversations and collates examples into :class:`mmassist.core.runtime.model.Batch` objects."""

    def __init__(self, tokenizer, encoders: Mapping[str, Encoder], max_length: int, system_prompt: str | None = None,
                 encode_user_text: bool = False):
        self.tokenizer = tokenizer
        if encode_user_text and "text" not in encoders:
            raise ConfigError("task.encode_user_text needs a text encoder (encoders.text)")
        self.encode_user_text = encode_user_text
        self.encoders = encoders
        self.max_length = max_length
        self.system_prompt = system_prompt
        self.modalities = list(encoders)
        self._placeholder_re = re.compile("|".join(re.escape(placeholder_token(m)) for m in self.modalities)) \
            if self.modalities else None
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("the decoder's tokenizer must be a fast (Rust) tokenizer; "
                              "this one has no token offsets")

    # -- conversations -----------------------------------------------------------------------

    def conversation(self, prompt: str | Sequence[Mapping[str, Any]],
                     media: Mapping[str, Sequence[Any]] | None = None) -> Conversation:
        """Normalise a prompt or messages plus media keyword arguments into a :class:`Conversation`."""
        if isinstance(prompt, str):
            raw = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(m, Mapping) for m in prompt):
            raw = list(prompt)
        else:
            raise UnsupportedInputError(f"a prompt must be a string or a list of messages, not {type(prompt).__name__}")
        items: dict[str, list[Media]] = {m: [] for m in self.modalities}
        messages = []
        for i, msg in enumerate(raw):
            role = ROLE_ALIASES.get(str(msg.get("role", msg.get("from", ""))).lower())
            if role is None:
                raise UnsupportedInputError(f"message {i} has no known role (user/assistant/system, or LLaVA's "
                                            f"human/gpt): {dict(msg)!r:.200}")
            content = msg.get("content", msg.get("value"))
            messages.append({"role": role, "content": self._content_text(content, items, i)})
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        for modality, given in (media or {}).items():
            given = list(given or [])
            if not given:
                continue
            self._check_modality(modality)
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last_user is None:
                raise UnsupportedInputError("media were given but the conversation has no user message")
            tag = placeholder_token(modality)
            free_tags = sum(m["content"].count(tag) for m in messages) - len(items[modality])
            if free_tags == 0:  # LLaVA's convention: media without placeholders go before the text
                msg = messages[last_user]
                messages[last_user] = {**msg, "content": (tag + "\n") * len(given) + msg["content"]}
            for x in given:
                media_item = Media.of(x) if modality == "text" else media_file(x)
                if media_item.modality != modality and media_item.modality in self.modalities:
                    raise UnsupportedInputError(
                        f"{media_item.name} is {media_item.modality} ({media_item.mime_type}), given as {modality}: "
                        f"pass it as {media_item.modality} (--{media_item.modality}, {media_item.modality}s=...)")
                items[modality].append(media_item)
        if self.encode_user_text and not items["text"]:
            messages = self._add_user_text_items(messages, items)
        conv = Conversation(messages, {m: v for m, v in items.items() if v})
        self._check_counts(conv)
        return conv

    def classification_conversation(self, prompt: str, *, text: str | None = None,
                                    item: tuple[str, Any] | None = None) -> Conversation:
        """What a classifier reads for one input: ``prompt`` (``task.prompt``) with the input in it, either
        ``text`` written inline (no text encoder) or ``item``, a ``(modality, input)`` pair, at its placeholder.
        Training and :meth:`mmassist.core.Assistant.classify` both build their prompts here."""
        if text is not None:
            return self.conversation(f"{prompt}\n{text}" if prompt else text)
        modality, value = item
        tag = placeholder_token(modality)
        body = prompt if tag in prompt else (f"{tag}\n{prompt}" if prompt else tag)
        return self.conversation(body, {modality: [Media.of(value)]})

    def tagging_conversation(self, prompt: str, words: Sequence[str]) -> Conversation:
        """What a token classifier reads: ``prompt`` (``task.prompt``) with the words as one text item at its
        ``<text>`` placeholder (the words themselves go to the text encoder: see :meth:`encode_words`)."""
        return self.classification_conversation(prompt, item=("text", text_media(" ".join(words))))

    def encode_words(self, prompt: str, words: Sequence[str], tags: Sequence[int] | None = None) -> Encoded:
        """One sentence of words (and, to train, their tag indices) for a token classifier."""
        if not words:
            raise UnsupportedInputError("there are no words to tag")
        bad = next((w for w in words if not isinstance(w, str) or not w or any(c.isspace() for c in w)), None)
        if bad is not None:
            raise UnsupportedInputError(f"every word must be a non-empty string without spaces, got {bad!r}")
        encoded = self.encode(self.tagging_conversation(prompt, words), add_generation_prompt=True)
        encoded.words, encoded.tags = list(words), None if tags is None else list(tags)
        return encoded

    def _add_user_text_items(self, messages: list[dict[str, str]], items: dict[str, list[Media]]) -> list[dict[str, str]]:
        """``task.encode_user_text``: each user turn's own words (placeholders removed) also become a
        text item, with its ``<text>`` placeholder put before the turn's text."""
        tag = placeholder_token("text")
        out = []
        for msg in messages:
            words = self._placeholder_re.sub("", msg["content"]).strip() if msg["role"] == "user" else ""
            if words:
                items["text"].append(text_media(words))
                msg = {**msg, "content": f"{tag}\n{msg['content']}"}
            out.append(msg)
        return out

    def _content_text(self, content: Any, items: dict[str, list[Media]], index: int) -> str:
        if isinstance(content, str):
            return content
        if not isinstance(content, (list, tuple)):
            raise UnsupportedInputError(f"message {index}: content must be a string or a list of parts")
        try:
            parts = content_parts(content)  # a part of a modality this model lacks: _check_modality says so
        except UnsupportedInputError as e:
            raise UnsupportedInputError(f"message {index}: {e}") from None
        pieces = []
        for kind, value in parts:
            if kind == "text":
                pieces.append(("text", str(value)))
                continue
            self._check_modality(kind)
            if value is None:
                raise UnsupportedInputError(f"message {index}: a {kind} part has no {kind}, url or path")
            items[kind].append(Media.of(value) if kind == "text" else media_file(value))
            pieces.append((kind, placeholder_token(kind)))
        return join_parts(pieces)

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise UnsupportedInputError(f"this model takes no {modality} input; it was built for "
                                        f"{', '.join(self.modalities) or 'text only'}")

    def _check_counts(self, conv: Conversation) -> None:
        text = "".join(m["content"] for m in conv.messages)
        for m in self.modalities:
            n_tags, n_items = text.count(placeholder_token(m)), len(conv.items.get(m, []))
            if n_tags != n_items:
                raise UnsupportedInputError(
                    f"the prompt has {n_tags} {placeholder_token(m)} placeholder(s) but {n_items} {m} item(s) "
                    f"were given; put exactly one {placeholder_token(m)} in the text for each {m}"
                )

    # -- tokenizing --------------------------------------------------------------------------

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, conv: Conversation, *, add_generation_prompt: bool, with_labels: bool = False,
               class_label: int | None = None) -> Encoded:
        """Token ids (one placeholder per item) and, for training, labels on the assistant's tokens only."""
        messages = conv.messages
        full = self.render(messages, add_generation_prompt)
        spans = []
        if with_labels:
            for i, msg in enumerate(messages):
                if msg["role"] != "assistant":
                    continue
                start = len(self.render(messages[:i], True))
                end = len(self.render(messages[: i + 1], False))
                spans.append((start, end))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=with_labels)
        ids = enc["input_ids"]
        if len(ids) > self.max_length:
            raise PromptTooLongError(
                f"the conversation is {len(ids)} tokens long, over decoder.max_length={self.max_length}; "
                "shorten it or raise decoder.max_length"
            )
        labels = None
        if with_labels:
            labels = [tok if any(s <= a < e for s, e in spans) else IGNORE_INDEX
                      for tok, (a, _) in zip(ids, enc["offset_mapping"])]
        order = [tag[1:-1] for tag in self._placeholder_re.findall(full)] if self._placeholder_re else []  # <m> -> m
        return Encoded(ids, labels, conv.items, order, class_label)

    # -- batching ----------------------------------------------------------------------------

    def collate(self, examples: Sequence[Encoded], padding_side: str = "right",
                cache: FeatureCache | None = None) -> Batch:
        """Pad token ids and preprocess every modality's items of the batch in one call per encoder.

        With a feature cache, items of its modalities already in the cache are not preprocessed.
        """
        pad = self.tokenizer.pad_token_id
        length = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), length), pad, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        has_labels = all(e.labels is not None for e in examples)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long) if has_labels else None
        for b, e in enumerate(examples):
            n = len(e.input_ids)
            sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
            ids[b, sl] = torch.tensor(e.input_ids)
            mask[b, sl] = 1
            if labels is not None:
                labels[b, sl] = torch.tensor(e.labels)
        media, keys, missing = {}, {}, {}
        word_index = token_labels = None
        if any(e.words is not None for e in examples):
            media["text"], word_index, token_labels = self._collate_words(examples)
        for m in self.modalities:
            items = [x for e in examples for x in e.items.get(m, [])]
            if not items or m in media:
                continue
            if cache is not None and m in cache.modalities:
                keys[m] = [content_key(m, x) for x in items]
                first = {}  # a new item that appears twice in the batch is encoded once
                for i, k in enumerate(keys[m]):
                    if k not in cache and k not in first:
                        first[k] = i
                missing[m] = list(first.values())
                if missing[m]:
                    media[m] = self.encoders[m].preprocess([items[i] for i in missing[m]])
            else:
                media[m] = self.encoders[m].preprocess(items)
        class_labels = None
        if all(e.class_label is not None for e in examples):
            class_labels = torch.tensor([e.class_label for e in examples], dtype=torch.long)
        return Batch(ids, mask, labels, media, [e.item_modalities for e in examples], class_labels, padding_side,
                     keys, missing, word_index, token_labels)

    def _collate_words(self, examples: Sequence[Encoded]) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                   torch.Tensor | None]:
        """The text encoder's batch of the examples' words, ``word_index`` (B, T): the word whose first
        piece each token is (-1 elsewhere), and ``token_labels`` (B, T): that word's tag index (-100
        elsewhere) when every example has tags."""
        if not all(e.words is not None and len(e.items.get("text", [])) == 1 for e in examples):
            raise UnsupportedInputError("a token classification batch holds sentences of words only, one a prompt")
        inputs, word_ids = self.encoders["text"].preprocess_words([e.words for e in examples])
        length = max(len(ids) for ids in word_ids)
        word_index = torch.full((len(examples), length), -1, dtype=torch.long)
        with_tags = all(e.tags is not None for e in examples)
        token_labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long) if with_tags else None
        for b, ids in enumerate(word_ids):
            previous = None
            for t, w in enumerate(ids):
                if w is not None and w != previous:  # a word's first piece carries its tag
                    word_index[b, t] = w
                    if token_labels is not None:
                        token_labels[b, t] = examples[b].tags[w]
                previous = w
        return inputs, word_index, token_labels
