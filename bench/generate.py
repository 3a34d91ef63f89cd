"""Generation: ``Assistant.chat`` against a raw ``generate()`` of the same decoder on the same embeddings.

One image and a prompt, greedy, a fixed number of new tokens (nothing stops early: our end-of-turn
ids are set to one that never occurs, and the raw call has no EOS). The raw side gets the
embeddings from ``model.embed(batch)`` (image encoder and fusion), timed separately and added to
its time, since ``chat`` has to compute them too; ``chat`` also pays for rendering and tokenizing
the prompt and preprocessing the image.

``chat`` is ``Assistant.chat(...)`` (the answer at the end, the key's side); ``chat streamed``
is ``Assistant.chat(..., stream=True)`` joined, what the web app uses.

Time to first token is ``max_new_tokens=1``; the per-token time is (T(N) - T(1)) / (N - 1).

``--model NAME_OR_FOLDER`` (``python -m bench --only generate --model starter``) measures a trained
model instead of the built one: a text question (what the web app's first token waits for) and, when
the model has an image encoder, a picture question, with the model's own decoding settings on both
sides (its repetition penalty included).
"""

from __future__ import annotations

import cProfile
import io
import pstats
from dataclasses import dataclass

import torch

from bench.common import Section, compare, log, ms, ratio
from bench.models import build_model, fusion_config, images, llama


@dataclass
class Setup:
    decoder: dict
    image_model: str
    image_size: int
    new_tokens: int
    repeats: int


FULL = Setup(decoder=llama(512, 8, 8, 1376), image_model="vit_small_patch16_224", image_size=128, new_tokens=128,
             repeats=5)
GPU = Setup(decoder=llama(2048, 16, 16, 5632), image_model="vit_large_patch16_224", image_size=224, new_tokens=256,
            repeats=5)
QUICK = Setup(decoder=llama(64, 2, 4, 128), image_model="vit_tiny_patch16_224", image_size=64, new_tokens=16,
              repeats=1)
PROMPT = "What is in this picture? Describe the shapes, their colours and where they are."


def build(s: Setup, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from mmassist import core

    cfg = fusion_config({"image": {"name": "image/timm", "config": {"model_name": s.image_model,
                                                                     "image_size": s.image_size}}},
                        s.decoder, llava_like=False)
    model, tokenizer = build_model(cfg)
    asst = core.Assistant(model, tokenizer, cfg, core.Host(load_entrypoints=False), device=device, dtype=dtype)
    asst.eos_ids = [-1]  # never generated: every call makes exactly max_new_tokens tokens
    return asst


def _measure(asst, picture, n: int, repeats: int, prompt: str = PROMPT) -> dict[str, float]:
    """Median seconds of: chat (whole, streamed) for n and 1 tokens, embed, raw generate for n and 1.
    ``picture`` None asks ``prompt`` alone."""
    from mmassist.core.runtime.assistant import autocast

    model, decoder = asst.model, asst.model.decoder
    pictures = [] if picture is None else [picture]
    gen = asst.cfg.generation
    conv = asst.processor.conversation(prompt, {"image": pictures} if pictures else {})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)],
                                   padding_side="left").to(asst.device)
    with torch.no_grad(), autocast(asst.device, asst.dtype):
        embeds, mask, _, _ = model.embed(batch)

    def streamed(k: int) -> str:
        return "".join(asst.chat(prompt, images=pictures, max_new_tokens=k, temperature=0.0, stream=True))

    def whole(k: int) -> str:
        return asst.chat(prompt, images=pictures, max_new_tokens=k, temperature=0.0)

    def embed():
        with torch.no_grad(), autocast(asst.device, asst.dtype):
            return model.embed(batch)

    def raw(k: int):
        with torch.no_grad(), autocast(asst.device, asst.dtype):
            out = decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=k, min_new_tokens=k,
                                   do_sample=False, eos_token_id=None, pad_token_id=0,
                                   repetition_penalty=gen.repetition_penalty)
        assert out.shape[1] == k, out.shape
        return out

    t = compare({
        "chat N": lambda: whole(n),
        "chat 1": lambda: whole(1),
        "streamed N": lambda: streamed(n),
        "streamed 1": lambda: streamed(1),
        "embed": embed, "raw N": lambda: raw(n), "raw 1": lambda: raw(1),
    }, repeats=repeats, warmup=1, device=asst.device)
    out = {k: v.median for k, v in t.items()}
    out["same text"] = float(asst.tokenizer.decode(raw(n)[0].tolist(), skip_special_tokens=True)
                             == streamed(n) == whole(n))
    return out


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32,
        model: str | None = None) -> Section:
    if model:
        return run_model(model, quick, device)
    s = QUICK if quick else (GPU if str(device).startswith("cuda") else FULL)
    section = Section("generate", "Generation: Assistant.chat vs raw transformers generate() on the same embeddings")
    log("generate: building the model")
    asst = build(s, device, dtype)
    picture = images(1, s.image_size, seed=3)[0]
    n = s.new_tokens
    log(f"generate: timing {n} new tokens, {s.repeats} interleaved repeats")
    t = _measure(asst, picture, n, s.repeats)
    raw_total = t["embed"] + t["raw N"]
    raw_tok = (t["raw N"] - t["raw 1"]) / (n - 1)

    def row(side: str, total: float, first: float, per_token: float) -> None:
        section.row(side=side, **{"new tokens": n, "total ms": ms(total), "first token ms": ms(first),
                                  "per token ms": round(per_token * 1000, 2), "tokens/s": n / total,
                                  "vs raw": ratio(total, raw_total)})

    for name, label in (("chat", "ours: Assistant.chat"), ("streamed", "ours: Assistant.chat, streamed")):
        row(label, t[f"{name} N"], t[f"{name} 1"], (t[f"{name} N"] - t[f"{name} 1"]) / (n - 1))
    row("raw: embed + generate()", raw_total, t["embed"] + t["raw 1"], raw_tok)
    row("raw: generate() alone", t["raw N"], t["raw 1"], raw_tok)
    section.keys["generate_overhead_vs_hf"] = ratio(t["chat N"], raw_total)
    section.keys["generate_overhead_vs_hf_streamed"] = ratio(t["streamed N"], raw_total)
    decoder = asst.model.decoder
    section.note(f"decoder Llama {s.decoder['hidden_size']}x{s.decoder['num_hidden_layers']} "
                 f"({sum(p.numel() for p in decoder.parameters()) / 1e6:.1f}M params), {s.image_model} at "
                 f"{s.image_size}px, greedy, {n} new tokens; all give the same text: {bool(t['same text'])}")
    if not quick:
        log("generate: framework time per token (a 1-layer, 16-wide decoder)")
        tiny = build(Setup(decoder=llama(16, 1, 2, 32), image_model="vit_tiny_patch16_224", image_size=64,
                           new_tokens=128, repeats=5), device, dtype)
        m = _measure(tiny, images(1, 64, seed=3)[0], 128, 5)
        section.tables["Framework time per token (1-layer, 16-wide decoder: the model's own work is ~0)"] = [
            {"side": side, "per token ms": round((m[f"{key} N"] - m[f"{key} 1"]) / 127 * 1000, 3)}
            for side, key in (("Assistant.chat", "chat"), ("Assistant.chat, streamed", "streamed"),
                              ("transformers generate()", "raw"))]
        section.tables["Where chat's time goes (cProfile, one call, by own time)"] = _profile(
            lambda: asst.chat(PROMPT, images=[picture], max_new_tokens=n))
    return section


TEXT_PROMPT = "Tell me about the Moon and why it has phases."


def run_model(name: str, quick: bool = False, device: str | None = None) -> Section:
    """The generation figures for a trained model (a registered name or a checkpoint folder)."""
    from mmassist import core

    section = Section("generate", f"Generation: Assistant.chat vs raw transformers generate(), model {name}")
    log(f"generate: loading {name}")
    asst = core.Assistant.from_pretrained(name, device=None if device == "cpu" else device)
    asst.eos_ids = [-1]  # every call makes exactly n tokens
    n, repeats = (8, 1) if quick else (64, 3)
    questions = [("text question", None, TEXT_PROMPT)]
    image = next((e for e in asst.cfg.encoders.values() if e.name.startswith("image/")), None)
    if image is not None:
        questions.append(("picture question", images(1, 128, seed=3)[0], PROMPT))
    for label, picture, prompt in questions:
        log(f"generate: {label}, {n} new tokens, {repeats} interleaved repeats")
        t = _measure(asst, picture, n, repeats, prompt=prompt)
        raw_total = t["embed"] + t["raw N"]
        for side, total, first in (("ours: Assistant.chat", t["chat N"], t["chat 1"]),
                                   ("ours: Assistant.chat, streamed", t["streamed N"], t["streamed 1"]),
                                   ("raw: embed + generate()", raw_total, t["embed"] + t["raw 1"])):
            section.row(question=label, side=side, **{"new tokens": n, "total ms": ms(total),
                                                      "first token ms": ms(first), "tokens/s": n / total,
                                                      "vs raw": ratio(total, raw_total)})
        if picture is None:
            section.keys["generate_overhead_vs_hf"] = ratio(t["chat N"], raw_total)
            section.keys["generate_overhead_vs_hf_streamed"] = ratio(t["streamed N"], raw_total)
            section.keys["first_token_s_text"] = t["streamed 1"]
        section.note(f"{label}: all three give the same text: {bool(t['same text'])}")
    decoder = asst.model.decoder
    section.note(f"{name}: decoder {type(decoder).__name__} ({sum(p.numel() for p in decoder.parameters()) / 1e6:.1f}M "
                 f"params), {asst.dtype} on {asst.device}, greedy, repetition penalty "
                 f"{asst.cfg.generation.repetition_penalty}; the first token of the streamed text answer is what "
                 "the web app's Chat waits for")
    return section


def _profile(fn) -> list[dict]:
    """The Python functions with the most own time in one call (C work shows under its caller)."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{name} ({file.rsplit('/', 2)[-1] if '/' in file else file}:{line})",
                     "calls": nc, "own ms": round(tt * 1000, 1), "cumulative ms": round(ct * 1000, 1)})
    rows.sort(key=lambda r: -r["own ms"])
    return rows[:10]
