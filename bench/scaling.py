"""Scaling with video length: a training step of fusion + decoder on cached frame features.

The frame backbone is frozen and its features are in the feature cache (as in a fine-tune from
the second epoch on), so a step is: the cache lookup, temporal + modality embeddings, the
projector, the decoder forward and backward, AdamW. Frames per video: 8, 16, 32, 64, each frame
``TOKENS_PER_FRAME`` tokens; the MLP projector passes every token to the decoder, the Perceiver
resampler always ``NUM_LATENTS``.

Peak memory is the peak of PyTorch tensor memory during one step above what was live before it
(from the profiler's allocation events; the optimizer state exists already).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.common import Section, compare, log, ms, peak_tensor_memory, ratio
from bench.models import build_model, fusion_config, llama

TOKENS_PER_FRAME = 4
NUM_LATENTS = 32


@dataclass
class Setup:
    frames: tuple[int, ...]
    batch: int
    feature_dim: int
    backbone: str
    decoder: dict
    repeats: int


FULL = Setup(frames=(8, 16, 32, 64), batch=4, feature_dim=384, backbone="vit_small_patch16_224",
             decoder=llama(256, 4, 4, 688), repeats=5)
GPU = Setup(frames=(8, 16, 32, 64), batch=16, feature_dim=1024, backbone="vit_large_patch16_224",
            decoder=llama(1024, 12, 16, 2816), repeats=10)
QUICK = Setup(frames=(8, 64), batch=2, feature_dim=192, backbone="vit_tiny_patch16_224",
              decoder=llama(64, 2, 4, 128), repeats=2)
PROJECTORS = {"mlp": {"kind": "mlp"},
              "resampler": {"kind": "resampler", "num_latents": NUM_LATENTS, "depth": 2, "heads": 4}}


def _step_fn(s: Setup, frames: int, projector: dict, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A training step (closure) of a fresh model whose cache holds ``s.batch`` videos of ``frames`` frames."""
    from mmassist.core.runtime.assistant import autocast
    from mmassist.core.contract.encoders import EncoderOutput
    from mmassist.core.runtime.feature_cache import FeatureCache, content_key
    from mmassist.core.training.finetune import apply_freezing, param_groups
    from mmassist.core.contract.media import Media
    from mmassist.core.runtime.processor import Processor

    video = {"name": "video/decord", "freeze": True,
             # one block is enough: the backbone never runs, its features come from the cache
             "config": {"backbone": {"model_name": s.backbone, "model_kwargs": {"depth": 1}}, "image_size": 64,
                        "num_frames": frames, "max_frames": max(frames, 32), "tokens_per_frame": TOKENS_PER_FRAME}}
    cfg = fusion_config({"video": video}, s.decoder, llava_like=False,
                        fusion={"modality_projectors": {"video": projector}})
    model, tokenizer = build_model(cfg)
    apply_freezing(model, cfg)
    model.to(device)
    model.feature_cache = FeatureCache(["video"])
    processor = Processor(tokenizer, model.encoders, cfg.decoder.max_length)
    clips = [Media("video/mp4", data=f"clip {i}".encode(), name=f"clip{i}.mp4") for i in range(s.batch)]
    encoded = []
    for i, clip in enumerate(clips):
        messages = [{"role": "user", "content": "<video>\nWhat happens in this video, from start to end?"},
                    {"role": "assistant", "content": f"A square moves right while a disc falls ({i})."}]
        encoded.append(processor.encode(processor.conversation(messages, {"video": [clip]}),
                                        add_generation_prompt=False, with_labels=True))
    t = frames * TOKENS_PER_FRAME
    gen = torch.Generator().manual_seed(frames)
    model.feature_cache.put([content_key("video", c) for c in clips], EncoderOutput(
        features=torch.randn(s.batch, t, s.feature_dim, generator=gen).to(device),
        mask=torch.ones(s.batch, t, dtype=torch.bool, device=device),
        time_index=torch.arange(frames).repeat_interleave(TOKENS_PER_FRAME).expand(s.batch, t).to(device)))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), fused=str(device).startswith("cuda"))
    model.train()

    def step():
        batch = processor.collate(encoded, cache=model.feature_cache).to(device)
        with autocast(torch.device(device), dtype):
            loss = model(batch).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch

    batch = step()  # also a warm-up: the optimizer state now exists
    with torch.no_grad():
        seq = model.embed(batch)[0].shape[1]
    return step, seq


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Section:
    s = QUICK if quick else (GPU if str(device).startswith("cuda") else FULL)
    section = Section("scaling", "Training step of fusion + decoder on cached frame features, by frames per video")
    results: dict[tuple[str, int], dict] = {}
    steps = {}
    for frames in s.frames:
        log(f"scaling: building the {frames}-frame models")
        for name, projector in PROJECTORS.items():
            steps[(name, frames)], seq = _step_fn(s, frames, projector, device, dtype)
            results[(name, frames)] = {"seq": seq, "peak": peak_tensor_memory(steps[(name, frames)], device)}
    log("scaling: timing, all configurations interleaved")
    t = compare({f"{name} {frames}": fn for (name, frames), fn in steps.items()}, repeats=s.repeats, warmup=0,
                device=device)
    for (name, frames) in steps:
        results[(name, frames)]["time"] = t[f"{name} {frames}"].median
    for name in PROJECTORS:
        base = results[(name, s.frames[0])]["time"]
        for frames in s.frames:
            r = results[(name, frames)]
            section.row(projector=name, frames=frames, **{"feature tokens": frames * TOKENS_PER_FRAME,
                                                         "decoder tokens": r["seq"], "step ms": ms(r["time"]),
                                                         f"vs {s.frames[0]} frames": ratio(r["time"], base),
                                                         "peak MiB": round(r["peak"] / 2**20, 1)})
    last, first = s.frames[-1], s.frames[0]
    section.keys["resampler_step_time_ratio_64_vs_8"] = ratio(results[("resampler", last)]["time"],
                                                              results[("resampler", first)]["time"])
    section.keys["mlp_step_time_ratio_64_vs_8"] = ratio(results[("mlp", last)]["time"], results[("mlp", first)]["time"])
    section.keys["resampler_peak_memory_ratio_64_vs_8"] = ratio(results[("resampler", last)]["peak"],
                                                                results[("resampler", first)]["peak"])
    section.keys["mlp_peak_memory_ratio_64_vs_8"] = ratio(results[("mlp", last)]["peak"],
                                                          results[("mlp", first)]["peak"])
    section.note(f"batch {s.batch} videos, {TOKENS_PER_FRAME} tokens per frame of width {s.feature_dim} "
                 f"({s.backbone} features, cached), Llama {s.decoder['hidden_size']}x{s.decoder['num_hidden_layers']}, "
                 f"resampler: {NUM_LATENTS} latents, depth 2; learned temporal and modality embeddings")
    return section
