"""The change proposed for ``core/generate.py`` and ``core/assistant.py`` (issue 8), runnable here.

1. ``generate_ids``: for a batch without padding (one prompt, what ``chat`` generates for), call
   the decoder with no attention mask and no position ids. transformers then builds and checks
   no mask on each step (``create_causal_mask`` -> ``sdpa_mask`` -> ``is_tracing``, which asks
   CUDA whether a graph is being captured): about 0.5 ms a token here, a fifth of a small
   model's step. The prompt's forward keeps the logits of its last position only
   (``logits_to_keep=1``, where the decoder takes it), as ``generate()`` does: no
   (L, vocab) logits for the time to first token.
2. ``Assistant.chat(stream=False)`` with no stop strings: collect the token ids and decode once
   (``_generate_batch``), instead of decoding the whole answer again after every token to find
   what can be streamed (quadratic in its length).

Once applied, the benchmark measures the shipped code (see :func:`bench.generate.proposed_chat`).
"""

from __future__ import annotations

import inspect
from typing import Iterator, Sequence

import torch

from core.config import GenerationConfig
from core.generate import cache_keyword, new_cache, next_token_logits_processed, pick


@torch.no_grad()
def generate_ids(model, batch, gen: GenerationConfig, *, eos_ids: Sequence[int],
                 banned_ids: Sequence[int] = (), use_cache: bool = True) -> Iterator[torch.Tensor]:
    """``core.generate.generate_ids`` with the change above; the same tokens."""
    decoder = model.decoder
    embeds, mask, _, ids = model.embed(batch)  # (B, L, D), (B, L), _, (B, L)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    device = embeds.device
    eos = torch.tensor(list(eos_ids), device=device)
    banned = torch.tensor(list(banned_ids), dtype=torch.long, device=device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
    cache = {cache_keyword(decoder): new_cache(decoder)} if use_cache else {}  # filled in place
    embed_tokens = decoder.get_input_embeddings()
    # Without padding (one prompt) the decoder needs no mask and no positions: transformers then
    # builds and checks no mask on each step.
    padded = not use_cache or not bool(mask.all())
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(decoder.forward).parameters else {}
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


def chat(asst, prompt: str, images: Sequence, **generation) -> str:
    """``Assistant.chat(prompt, images=images, **generation)`` with the change above (not streamed)."""
    import core.assistant

    gen = asst._generation(generation)
    conv = asst.processor.conversation(prompt, {"image": list(images)})
    encoded = asst.processor.encode(conv, add_generation_prompt=True)
    shipped = core.assistant.generate_ids
    core.assistant.generate_ids = generate_ids
    try:
        if not gen.stop:  # nothing to check while generating: decode once at the end
            return asst._generate_batch([encoded], gen)[0]
        return "".join(asst._stream([encoded], gen))
    finally:
        core.assistant.generate_ids = shipped
