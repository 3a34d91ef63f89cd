"""Fine-tuning throughput: our fused model against an equivalent transformers LLaVA, 3 epochs.

Both sides train the same thing from the same weights: a Llama decoder and LLaVA's MLP projector
on top of a frozen ViT image encoder (the very same module), on the same captioned images with
prompts of varied length, batch 8, AdamW, gradient clipping at 1.0.

- ours: the steps of ``core.finetune`` (its ``epoch_batches`` with length grouping, ``param_groups``,
  ``Processor.collate`` with the feature cache, ``MultimodalModel.forward``), without its
  evaluation and checkpoint writing; once with the frozen-encoder feature cache, once without.
- LLaVA: ``LlavaForConditionalGeneration`` in a plain PyTorch loop: random batches padded to their
  longest example, the (frozen) vision tower run on every step. Its pixels are preprocessed once
  up front, which spares it the per-step image preprocessing that our loop pays for.

The three runs advance step by step in turn, so that a change in the machine's load hits all of
them alike. Tokens/s counts real tokens (image tokens included, padding excluded).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from bench.common import Section, log, ratio, synchronize
from bench.models import build_model, caption_examples, fusion_config, llama, llava_twin

EPOCHS = 3


@dataclass
class Setup:
    examples: int
    warmup_examples: int
    batch: int
    image_model: str
    image_size: int
    decoder: dict
    prompt_chars: tuple[int, int]
    answer_chars: tuple[int, int]


# The frozen encoder is LLaVA-1.5's kind, a CLIP ViT-L/14, at 112 px: 8 x 8 patches + the class token = 65 tokens.
FULL = Setup(examples=16, warmup_examples=8, batch=8, image_model="vit_large_patch14_clip_224", image_size=112,
             decoder=llama(256, 4, 4, 688), prompt_chars=(10, 200), answer_chars=(10, 30))
GPU = Setup(examples=256, warmup_examples=32, batch=32, image_model="vit_large_patch16_224", image_size=224,
            decoder=llama(1024, 12, 16, 2816), prompt_chars=(20, 600), answer_chars=(20, 120))
QUICK = Setup(examples=16, warmup_examples=8, batch=8, image_model="vit_tiny_patch16_224", image_size=64,
              decoder=llama(64, 2, 4, 128), prompt_chars=(10, 120), answer_chars=(5, 20))


def _config(s: Setup, feature_cache: bool):
    image = {"name": "image/timm", "freeze": True,
             "config": {"model_name": s.image_model, "image_size": s.image_size}}
    return fusion_config({"image": image}, s.decoder,
                         training={"batch_size": s.batch, "lr": 1e-4, "epochs": EPOCHS,
                                   "feature_cache": feature_cache, "group_by_length": True})


# -- our loop: the steps of core.finetune ----------------------------------------------------------


def our_steps(model, processor, cfg, train, seq_lengths, *, feature_cache: bool, device="cpu",
              dtype=torch.float32) -> Iterator[int]:
    """Train as ``core.finetune`` does; after each step yield the tokens of the padded batch
    (``seq_lengths``: each example's length with its image tokens, as the decoder sees it)."""
    from mmassist.core.runtime.assistant import autocast
    from mmassist.core.runtime.feature_cache import FeatureCache
    from mmassist.core.training.finetune import apply_freezing, epoch_batches, lr_lambda, param_groups

    t = cfg.training
    lengths = [len(e.input_ids) for e in train]  # what core.finetune groups by
    apply_freezing(model, cfg)
    model.feature_cache = FeatureCache(["image"]) if feature_cache else None
    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=tuple(t.betas), fused=_is_cuda(device))
    batches_per_epoch = len(epoch_batches(lengths, t.batch_size, t.seed, 0, False))
    epochs = int(t.epochs)
    total = epochs * batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.scheduler, int(t.warmup_ratio * total), total))
    model.train()
    for epoch in range(epochs):
        for shard in epoch_batches(lengths, t.batch_size, t.seed, epoch, t.group_by_length):
            batch = processor.collate([train[i] for i in shard], cache=model.feature_cache)
            with autocast(torch.device(device), dtype):
                loss = model(batch.to(device)).loss
                loss.backward()
            float(loss.detach())
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            yield len(shard) * max(seq_lengths[i] for i in shard)


# -- the LLaVA loop ---------------------------------------------------------------------------------


def llava_inputs(encoded, image_id: int, image_tokens: int, pad_id: int) -> dict[str, list[int]]:
    """What LlavaProcessor gives: the placeholder expanded to one image token per feature."""
    ids, labels = [], []
    for tok, lab in zip(encoded.input_ids, encoded.labels):
        n = image_tokens if tok == image_id else 1
        ids += [tok] * n
        labels += [lab if tok != image_id else -100] * n
    return {"input_ids": ids, "labels": labels}


def llava_steps(llava, rows: list[dict], pixels: torch.Tensor, batch: int, seed: int, pad_id: int,
                epochs: int = EPOCHS, device="cpu", dtype=torch.float32) -> Iterator[int]:
    """A plain loop: shuffled batches padded to their longest row; yield the padded batch's tokens."""
    from mmassist.core.runtime.assistant import autocast

    params = [p for p in llava.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=_is_cuda(device))
    llava.train()
    llava.model.vision_tower.eval()  # frozen
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(rows)).tolist()
        for s in range(0, len(order), batch):
            chunk = order[s: s + batch]
            length = max(len(rows[i]["input_ids"]) for i in chunk)
            ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), length), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for b, i in enumerate(chunk):
                n = len(rows[i]["input_ids"])
                ids[b, :n] = torch.tensor(rows[i]["input_ids"])
                labels[b, :n] = torch.tensor(rows[i]["labels"])
                mask[b, :n] = 1
            with autocast(torch.device(device), dtype):
                loss = llava(input_ids=ids.to(device), attention_mask=mask.to(device),
                             pixel_values=pixels[chunk].to(device), labels=labels.to(device)).loss
                loss.backward()
            float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            yield ids.numel()


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def interleave(runs: dict[str, Iterator[int]], device="cpu") -> dict[str, dict[str, float]]:
    """Advance the runs one step each in turn; per run: seconds, steps, tokens of the padded batches."""
    stats = {name: {"seconds": 0.0, "steps": 0, "tokens": 0} for name in runs}
    live = dict(runs)
    while live:
        for name in list(live):
            synchronize(device)
            start = time.perf_counter()
            try:
                tokens = next(live[name])
                synchronize(device)
            except StopIteration:
                del live[name]
                continue
            stats[name]["seconds"] += time.perf_counter() - start
            stats[name]["steps"] += 1
            stats[name]["tokens"] += tokens
    return stats


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Section:
    from mmassist.core.runtime.processor import Processor

    s = QUICK if quick else (GPU if _is_cuda(device) else FULL)
    section = Section("finetune", f"Fine-tuning, {EPOCHS} epochs: ours (core.finetune steps) vs transformers LLaVA")
    log("finetune: building the models")
    cfg = _config(s, feature_cache=True)
    base, tokenizer = build_model(cfg)
    image_id = base.placeholder_ids["image"]
    processor = Processor(tokenizer, base.encoders, cfg.decoder.max_length)
    data = caption_examples(s.examples + s.warmup_examples, s.image_size, s.prompt_chars, s.answer_chars)
    encoded = []
    for d in data:
        conv = processor.conversation(d["messages"], {"image": [d["image"]]})
        encoded.append(processor.encode(conv, add_generation_prompt=False, with_labels=True))
    warm, train = encoded[: s.warmup_examples], encoded[s.warmup_examples:]
    with torch.no_grad():
        image = base.encoders["image"]
        image_tokens = image(**image.preprocess(train[0].items["image"])).features.shape[1]
    seq_lengths = [len(e.input_ids) + image_tokens - 1 for e in train]  # as the decoder sees them
    pixels = torch.cat([base.encoders["image"].preprocess(e.items["image"])["pixel_values"] for e in train])
    rows = [llava_inputs(e, image_id, image_tokens, tokenizer.pad_token_id) for e in train]

    encoder = base.encoders["image"]
    share = {id(encoder): encoder}  # copies keep the one frozen encoder
    llava = llava_twin(base, image_id)
    _check_equivalent(base, llava, processor, train[0], image_id, image_tokens, tokenizer.pad_token_id, section)
    base.to(device)
    llava.to(device)
    ours_cached, ours_plain = base, copy.deepcopy(base, dict(share))

    log("finetune: warm-up step on other examples")
    warm_rows = [llava_inputs(e, image_id, image_tokens, tokenizer.pad_token_id) for e in warm]
    warm_pixels = torch.cat([base.encoders["image"].preprocess(e.items["image"])["pixel_values"] for e in warm])
    warm_cfg = cfg.override(**{"training.epochs": 1})
    next(our_steps(copy.deepcopy(base, dict(share)), processor, warm_cfg, warm, [0] * len(warm), feature_cache=False,
                   device=device, dtype=dtype))
    next(llava_steps(copy.deepcopy(llava, dict(share)), warm_rows, warm_pixels, s.batch, 1, tokenizer.pad_token_id, 1,
                     device=device, dtype=dtype))

    log(f"finetune: {EPOCHS} epochs x {len(train) // s.batch} steps, three runs interleaved")
    stats = interleave({
        "ours, feature cache": our_steps(ours_cached, processor, cfg, train, seq_lengths, feature_cache=True,
                                         device=device, dtype=dtype),
        "ours, no cache": our_steps(ours_plain, processor, cfg, train, seq_lengths, feature_cache=False,
                                    device=device, dtype=dtype),
        "LLaVA, plain loop": llava_steps(llava, rows, pixels, s.batch, 0, tokenizer.pad_token_id,
                                         device=device, dtype=dtype),
    }, device)
    real_tokens = sum(len(r["input_ids"]) for r in rows) * EPOCHS
    for name, st in stats.items():
        section.row(run=name, steps=st["steps"], seconds=round(st["seconds"], 2),
                    **{"samples/s": len(train) * EPOCHS / st["seconds"],
                       "real tokens/s": real_tokens / st["seconds"],
                       "padding share": round(1 - real_tokens / st["tokens"], 3)})
    cached, plain, ref = (stats[k]["seconds"] for k in ("ours, feature cache", "ours, no cache", "LLaVA, plain loop"))
    section.keys["finetune_speedup_vs_llava"] = ratio(ref, cached)
    section.keys["feature_cache_speedup"] = ratio(plain, cached)
    section.keys["finetune_speedup_vs_llava_without_cache"] = ratio(ref, plain)
    _explain(section, s, base, image_tokens)
    return section


def _check_equivalent(model, llava, processor, example, image_id, image_tokens, pad_id, section: Section) -> None:
    """Same example, same weights: the two models' losses must agree (they compute the same thing)."""
    batch = processor.collate([example])
    row = llava_inputs(example, image_id, image_tokens, pad_id)
    pixels = model.encoders["image"].preprocess(example.items["image"])["pixel_values"]
    with torch.no_grad():
        ours = float(model(batch).loss)
        ref = float(llava(input_ids=torch.tensor([row["input_ids"]]), pixel_values=pixels,
                          labels=torch.tensor([row["labels"]])).loss)
    section.note(f"equivalence check on one example: our loss {ours:.6f}, LLaVA's {ref:.6f}")
    if abs(ours - ref) > 1e-4 * max(1.0, abs(ref)):
        raise AssertionError(f"the LLaVA twin is not equivalent: loss {ref} vs ours {ours}")


def _explain(section: Section, s: Setup, model, image_tokens: int) -> None:
    """The setup, and what bounds the cache's gain: 3 epochs cost 3(E+D) without it and E+3D with it
    (E: the frozen encoder's forward per epoch, D: the rest), so it can at most give 3(E+D)/(E+3D).
    E and D are read off the two runs: the run without the cache pays E in every epoch, so
    E = (its time - the cached run's) / 2."""
    enc = model.encoders["image"]
    cached = next(r for r in section.rows if r["run"] == "ours, feature cache")["seconds"]
    plain = next(r for r in section.rows if r["run"] == "ours, no cache")["seconds"]
    e = (plain - cached) / (EPOCHS - 1)
    d = (cached - e) / EPOCHS
    bound = 3 * (e + d) / (e + 3 * d) if e > 0 and d > 0 else float("nan")
    section.note(
        f"setup: {s.examples} examples, batch {s.batch}, frozen {s.image_model} at {s.image_size}px "
        f"({image_tokens} image tokens, {sum(p.numel() for p in enc.parameters()) / 1e6:.0f}M params), Llama "
        f"{s.decoder['hidden_size']}x{s.decoder['num_hidden_layers']} "
        f"({sum(p.numel() for p in model.decoder.parameters()) / 1e6:.1f}M params) and an MLP projector trained, "
        f"prompts of {s.prompt_chars[0]}-{s.prompt_chars[1]} bytes")
    section.note(f"per epoch, frozen encoder E = {e:.1f} s, the rest D = {d:.1f} s: the cache can at most give "
                 f"3(E+D)/(E+3D) = {bound:.2f}x over {EPOCHS} epochs")
