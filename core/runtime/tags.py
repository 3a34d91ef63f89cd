"""Tags of token classification: one per word, ``O`` outside any entity, ``B-<type>`` at an entity's first
word, ``I-<type>`` inside it (BIO, as CoNLL-2003 writes them) or on every word of it (IO, as wikigold does).

Entities are read from either scheme the way seqeval's default mode (and conlleval) reads them: an entity
starts at a ``B-`` tag, or at an ``I-`` tag that does not continue an entity of the same type, and ends
before the next word that does not continue it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

OUTSIDE = "O"
PREFIXES = ("B-", "I-")
# A word: letters and digits with inner hyphens, apostrophes, dots or commas ("Jean-Luc", "U.S", "1,000"),
# or one other visible character.
_WORD = re.compile(r"\w+(?:[-'’.,]\w+)*|[^\w\s]")


def check_tag(tag: str) -> str | None:
    """What is wrong with a tag, or None: ``O``, or ``B-``/``I-`` and a type."""
    if not isinstance(tag, str):
        return f"a tag must be a string, got {type(tag).__name__}"
    if tag == OUTSIDE:
        return None
    if tag[:2] in PREFIXES and tag[2:].strip() == tag[2:] and tag[2:]:
        return None
    return f"{tag!r} is not a tag: tags are O, B-<type> or I-<type> (IO or BIO schemes, e.g. B-PER, I-LOC)"


def entity_type(tag: str) -> str | None:
    return None if tag == OUTSIDE else tag[2:]


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of a tag sequence: ``(type, first word, last word + 1)``, in order."""
    spans: list[tuple[str, int, int]] = []
    current: tuple[str, int] | None = None
    for i, tag in enumerate(tags):
        kind = entity_type(tag)
        continues = current is not None and tag.startswith("I-") and kind == current[0]
        if current is not None and not continues:
            spans.append((current[0], current[1], i))
            current = None
        if kind is not None and not continues:
            current = (kind, i)
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


def split_words(text: str) -> list[tuple[str, int, int]]:
    """A text's words with their character offsets ``(word, start, end)``, punctuation apart."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def sort_tags(tags: set[str] | Sequence[str]) -> list[str]:
    """``O`` first, then by entity type, ``B-`` before ``I-``: a stable order for a head's classes."""
    return sorted(set(tags), key=lambda t: ("" if t == OUTSIDE else t[2:], t[:2] if t != OUTSIDE else ""))


def word_tags(logits: "torch.Tensor", word_index: "torch.Tensor", n_words: Sequence[int],
              labels: Sequence[str], missing: str | None = OUTSIDE) -> list[list[str | None]]:
    """Each sentence's tag per word from a token classifier's ``logits`` (B, T, C): the tag of the word's
    first piece (``word_index`` (B, T), -1 on other tokens). A word that got no token (cut off by the text
    encoder's max_length) gets ``missing``."""
    best = logits.argmax(-1).tolist()  # (B, T)
    out = []
    for row, index, n in zip(best, word_index.tolist(), n_words):
        tags: list[str | None] = [missing] * n
        for tag, w in zip(row, index):
            if w >= 0:
                tags[w] = labels[tag]
        out.append(tags)
    return out
