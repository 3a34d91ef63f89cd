"""Token-by-token generation over spliced input embeddings, with or without a KV cache.

The loop is ours rather than ``model.generate`` so that it can stream as a plain iterator, stop
on strings, and run the same way with and without the cache (which the tests compare).
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterator, Sequence

import torch

from mmassist.core.runtime.config import GenerationConfig
from mmassist.core.runtime.model import Batch, MultimodalModel


def next_token_logits_processed(logits: torch.Tensor, seen: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to (B, V) logits; returns new logits."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0:
        scores = logits.gather(1, seen)  # (B, L)
        scores = torch.where(scores < 0, scores * gen.repetition_penalty, scores / gen.repetition_penalty)
        logits = logits.scatter(1, seen, scores)
    if gen.temperature == 0.0:
        return logits
    logits = logits / gen.temperature
    if gen.top_k > 0:
        kth = torch.topk(logits, min(gen.top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= gen.top_p  # keep the first token past the mass
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def repeated_ngram_ids(generated: Sequence[int], n: int) -> list[int]:
    """The tokens that would repeat a run of ``n`` tokens already in ``generated`` (an answer's own tokens):
    those that followed an earlier occurrence of its last ``n - 1`` tokens."""
    if n <= 0 or len(generated) < n:
        return []
    tail = list(generated[len(generated) - n + 1:]) if n > 1 else []
    return [generated[i + n - 1] for i in range(len(generated) - n + 1) if list(generated[i:i + n - 1]) == tail]


def ban_repeated_ngrams(logits: torch.Tensor, generated: torch.Tensor, n: int) -> torch.Tensor:
    """(B, V) logits with -inf at each row's :func:`repeated_ngram_ids` (``generated``: (B, T) new tokens)."""
    if n <= 0 or generated.shape[1] < n:
        return logits
    banned = [(row, repeated_ngram_ids(tokens, n)) for row, tokens in enumerate(generated.tolist())]
    if not any(ids for _, ids in banned):
        return logits
    logits = logits.clone()
    for row, ids in banned:
        logits[row, ids] = float("-inf")
    return logits


def pick(logits: torch.Tensor, gen: GenerationConfig, rng: torch.Generator | None) -> torch.Tensor:
    """(B, V) processed logits -> (B,) token ids: argmax when greedy, else a sample."""
    if gen.temperature == 0.0:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=rng).squeeze(1).to(logits.device)


@torch.no_grad()
def generate_ids(model: MultimodalModel, batch: Batch, gen: GenerationConfig, *, eos_ids: Sequence[int],
                 banned_ids: Sequence[int] = (), use_cache: bool = True,
                 on_prompt: Callable[[torch.Tensor], None] | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until all rows have ended or max_new_tokens.

    ``batch`` must be left-padded. Rows that have ended keep yielding ``eos_ids[0]``. ``on_prompt`` is
    called with each row's prompt length in tokens, media tokens included, (B,), before the first step.
    """
    decoder = model.decoder
    embeds, mask, _, ids = model.embed(batch)  # (B, L, D), (B, L), _, (B, L)
    if on_prompt is not None:
        on_prompt(mask.sum(1))
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    device = embeds.device
    eos = torch.tensor(list(eos_ids), device=device)
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
    cache = {cache_keyword(decoder): new_cache(decoder)} if use_cache else {}  # filled in place
    embed_tokens = decoder.get_input_embeddings()
    # Without padding (one prompt) the decoder needs no mask and no positions: transformers then
    # skips building a mask on every step, which costs as much as a small model's forward.
    padded = not use_cache or not bool(mask.all())
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(decoder.forward).parameters else {}
    prompt_length = ids.shape[1]
    for step in range(gen.max_new_tokens):
        if not use_cache:
            logits = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
        elif step == 0:  # the prompt: logits of its last position only
            logits = decoder(inputs_embeds=embeds, attention_mask=mask if padded else None,
                             position_ids=positions if padded else None, use_cache=True, **cache, **last_only).logits
        else:
            logits = decoder(input_ids=ids[:, -1:], attention_mask=mask if padded else None,
                             position_ids=positions[:, -1:] if padded else None, use_cache=True, **cache).logits
        logits = logits[:, -1]  # (B, V)
        if banned.numel():
            logits = logits.index_fill(1, banned, float("-inf"))
        if gen.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(logits, ids[:, prompt_length:], gen.no_repeat_ngram_size)
        token = pick(next_token_logits_processed(logits, ids, gen), gen, rng)  # (B,)
        token = torch.where(finished, eos[0], token)
        yield token
        finished |= torch.isin(token, eos)
        if bool(finished.all()):
            return
        ids = torch.cat([ids, token[:, None]], dim=1)  # (B, L+1)
        if padded:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
        if not use_cache:
            embeds = torch.cat([embeds, embed_tokens(token[:, None]).to(embeds.dtype)], dim=1)  # (B, L+1, D)


def cache_keyword(decoder) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` during 5.x; use what this version takes. A peft
    wrapper's forward takes ``**kwargs``: the model it wraps says."""
    base = decoder.get_base_model() if hasattr(decoder, "get_base_model") else decoder
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def new_cache(decoder):
    from transformers import DynamicCache

    return DynamicCache(config=decoder.config)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` might be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text up to the first stop string, whether one was found)."""
    hits = [text.find(s) for s in stops if s and s in text]
    if not hits:
        return text, False
    return text[: min(hits)], True
