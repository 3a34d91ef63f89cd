"""Putting media tokens into the prompt: check placeholders, expand them, splice features in.

Convention: the prompt holds ONE placeholder token per media item (``<image>``, ``<video>``...).
Before the decoder runs, :func:`expand_placeholders` repeats each placeholder as many times as that
item has feature tokens (labels -100 there), the ids are embedded with the decoder's input
embeddings, and :func:`splice` overwrites the placeholder positions with the feature tokens, in
order, like LLaVA's ``masked_scatter``. The k-th placeholder of a modality in an example takes the
k-th item of that modality in that example; order across modalities does not matter.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from mmassist.core.errors import UnsupportedInputError

IGNORE_INDEX = -100  # labels the loss skips (feature positions)

Counts = Sequence[Sequence[tuple[str, int]]]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_token_counts(input_ids: torch.Tensor, placeholder_ids: Mapping[str, int], counts: Counts, *,
                       expanded: bool = False, placeholder_text: Mapping[str, str] | None = None) -> None:
    """Raise UnsupportedInputError unless each example's placeholders match its media items.

    ``counts[b]`` lists example b's items as (modality, number of feature tokens). Before expansion
    (``expanded=False``) each item needs exactly one placeholder; after it, each modality needs as
    many placeholder slots as its items have tokens. The message names the example, the modality and
    both counts. ``placeholder_text`` maps modality to its token text for messages (default ``<m>``).
    """
    if len(counts) != input_ids.shape[0]:
        raise ValueError(f"counts has {len(counts)} examples but input_ids has {input_ids.shape[0]} rows")
    if len(set(placeholder_ids.values())) != len(placeholder_ids):
        raise ValueError(f"placeholder token ids must differ per modality, got {dict(placeholder_ids)}")

    def text(m: str) -> str:
        return (placeholder_text or {}).get(m, f"<{m}>")

    for b, items in enumerate(counts):
        n_items: dict[str, int] = {m: 0 for m in placeholder_ids}
        n_tokens: dict[str, int] = {m: 0 for m in placeholder_ids}
        for m, n in items:
            if m not in placeholder_ids:
                raise UnsupportedInputError(
                    f"example {b}: a {m} was given but this model has no {text(m)} placeholder token; it "
                    f"accepts {', '.join(placeholder_ids) or 'no media'}")
            n_items[m] += 1
            n_tokens[m] += int(n)
        for m, pid in placeholder_ids.items():
            slots = int((input_ids[b] == pid).sum())
            if not expanded and slots != n_items[m]:
                given = _plural(n_items[m], m) + (" was" if n_items[m] == 1 else " were")
                raise UnsupportedInputError(
                    f"example {b}: the prompt has {_plural(slots, text(m) + ' placeholder')} but {given} "
                    f"given; put exactly one {text(m)} in the prompt for each {m}")
            if expanded and slots != n_tokens[m]:
                raise UnsupportedInputError(
                    f"example {b}: the prompt has {_plural(slots, text(m) + ' slot')} but its "
                    f"{_plural(n_items[m], m)} {'has' if n_items[m] == 1 else 'have'} "
                    f"{_plural(n_tokens[m], 'feature token')}; expand the "
                    f"placeholders with fusion.expand_placeholders() using the fused token counts")


def expand_placeholders(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None,
                        placeholder_ids: Mapping[str, int], counts: Counts, *, pad_id: int = 0,
                        padding_side: str | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Repeat each placeholder token as many times as its item has feature tokens.

    ``input_ids`` (B, L) holds one placeholder per item; ``counts[b]`` lists example b's items as
    (modality, number of tokens), e.g. from :func:`mmassist.fusion.token_counts`. Returns new (ids, attention
    mask, labels) of shape (B, L') with labels -100 on the feature positions; rows that got shorter
    than L' are padded with ``pad_id`` / 0 / -100 on ``padding_side`` ("left" or "right"; by default
    left when the attention mask shows left padding, else right). ``attention_mask=None`` means no
    padding; ``labels=None`` returns None.
    """
    check_token_counts(input_ids, placeholder_ids, counts, expanded=False)
    B, L = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if padding_side is None:
        # left padding shows as some row starting with 0 while every row ends with a real token
        left = L > 0 and bool((attention_mask[:, 0] == 0).any()) and bool((attention_mask[:, -1] != 0).all())
        padding_side = "left" if left else "right"
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; choose 'left' or 'right'")
    rows_ids, rows_mask, rows_labels = [], [], []
    for b in range(B):
        repeats = torch.ones(L, dtype=torch.long, device=input_ids.device)  # (L,)
        is_slot = torch.zeros(L, dtype=torch.bool, device=input_ids.device)  # (L,)
        for m, pid in placeholder_ids.items():
            where = (input_ids[b] == pid).nonzero().flatten()
            sizes = [n for mm, n in counts[b] if mm == m]
            if len(sizes):
                repeats[where] = torch.tensor(sizes, dtype=torch.long, device=input_ids.device)
            is_slot |= input_ids[b] == pid
        rows_ids.append(input_ids[b].repeat_interleave(repeats))
        rows_mask.append(attention_mask[b].repeat_interleave(repeats))
        if labels is not None:
            rows_labels.append(labels[b].masked_fill(is_slot, IGNORE_INDEX).repeat_interleave(repeats))
    new_len = max(r.shape[0] for r in rows_ids)
    ids = _pad(rows_ids, new_len, pad_id, padding_side)  # (B, L')
    mask = _pad(rows_mask, new_len, 0, padding_side)  # (B, L')
    new_labels = _pad(rows_labels, new_len, IGNORE_INDEX, padding_side) if labels is not None else None
    return ids, mask, new_labels


def _pad(rows: list[torch.Tensor], length: int, value: int, side: str) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length), value)  # (B, L')
    for b, r in enumerate(rows):
        if side == "right":
            out[b, : r.shape[0]] = r
        else:
            out[b, length - r.shape[0]:] = r
    return out


def splice(input_embeds: torch.Tensor, input_ids: torch.Tensor, placeholder_ids: Mapping[str, int],
           item_tokens: Sequence[Sequence[tuple[str, torch.Tensor]]]) -> torch.Tensor:
    """Return ``input_embeds`` (B, L, D) with the placeholder slots of ``input_ids`` replaced by media tokens.

    ``item_tokens[b]`` lists example b's items as (modality, tokens (n, D)), e.g. the output of
    :class:`mmassist.fusion.FusionModule`; the ids must already be expanded (n slots per item). Slots are
    filled in order per modality. Tokens are cast to the embeddings' dtype; gradients flow to both.
    """
    counts = [[(m, int(t.shape[0])) for m, t in items] for items in item_tokens]
    check_token_counts(input_ids, placeholder_ids, counts, expanded=True)
    out = input_embeds
    for m, pid in placeholder_ids.items():
        # example by example, item by item: the same row-major order masked_scatter fills slots in
        tokens = [t for items in item_tokens for mm, t in items if mm == m]
        if not tokens:
            continue
        src = torch.cat(tokens).to(device=out.device, dtype=out.dtype)  # (n_slots, D)
        slots = (input_ids == pid).unsqueeze(-1).to(out.device)  # (B, L, 1)
        out = out.masked_scatter(slots, src)  # (B, L, D)
    return out
