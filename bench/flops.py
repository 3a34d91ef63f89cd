"""Hardware use: achieved FLOP/s of a training step against the matrix-multiply peak of this run.

The peak is the best of repeated ``torch.mm`` of 2048 x 2048 float32 matrices (2 n^3 FLOPs each),
measured in the same process with the same thread count as the step. The step is our fused
model's (``MultimodalModel.forward`` on a text batch, backward, AdamW) on a mid-size Llama decoder.
Model FLOPs per step: 6 x N x T for the matrix weights (N excludes the token embedding, a lookup)
plus 6 x layers x width x S x T for causal attention (half of the full 12 x ..., as a causal
kernel skips the masked half), T tokens in sequences of S.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.common import Section, compare, log, ms, peak_tensor_memory
from bench.models import build_model, fusion_config, llama


@dataclass
class Setup:
    decoder: dict
    batch: int
    seq: int
    steps: int
    matmul_n: int


FULL = Setup(decoder=llama(768, 12, 12, 2048), batch=4, seq=128, steps=2, matmul_n=2048)
GPU = Setup(decoder=llama(2048, 24, 16, 5632), batch=4, seq=2048, steps=5, matmul_n=8192)
QUICK = Setup(decoder=llama(256, 4, 4, 688), batch=2, seq=64, steps=1, matmul_n=1024)


def matmul_peak(n: int, repeats: int = 5, inner: int = 3, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the best of ``repeats`` rounds of ``inner`` n x n matrix products."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)  # warm-up

    def product():
        for _ in range(inner):
            torch.mm(a, b, out=c)

    return 2 * n**3 * inner / compare({"mm": product}, repeats=repeats, warmup=1, device=device)["mm"].best


def model_flops(decoder, tokens: int, seq: int) -> float:
    """6 N T + 6 L d S T (see the module docstring)."""
    cfg = decoder.config
    embedding = decoder.get_input_embeddings().weight
    matrix_params = sum(p.numel() for p in decoder.parameters() if p.dim() >= 2 and p is not embedding)
    head = decoder.get_output_embeddings()
    if head is not None and head.weight is embedding:  # tied: the LM head is a matrix product too
        matrix_params += embedding.numel()
    return 6 * matrix_params * tokens + 6 * cfg.num_hidden_layers * cfg.hidden_size * seq * tokens


def run(quick: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Section:
    from mmassist.core.runtime.assistant import autocast
    from mmassist.core.training.finetune import param_groups
    from mmassist.core.runtime.processor import Processor

    cuda = str(device).startswith("cuda")
    s = QUICK if quick else (GPU if cuda else FULL)
    section = Section("flops", "Hardware use: model FLOP/s of a training step vs the matmul peak of this run")
    log("flops: building the model")
    cfg = fusion_config({}, s.decoder, llava_like=False)
    model, tokenizer = build_model(cfg)
    processor = Processor(tokenizer, {}, cfg.decoder.max_length)
    gen = torch.Generator().manual_seed(0)
    text = "".join(chr(c) for c in torch.randint(97, 123, (s.batch * s.seq * 2,), generator=gen).tolist())
    examples = []
    for b in range(s.batch):
        chunk = text[b * 2 * s.seq: (b + 1) * 2 * s.seq]
        messages = [{"role": "user", "content": chunk[: s.seq // 2]}, {"role": "assistant", "content": chunk[s.seq:]}]
        enc = processor.encode(processor.conversation(messages), add_generation_prompt=False, with_labels=True)
        enc.input_ids, enc.labels = enc.input_ids[: s.seq], enc.labels[: s.seq]  # exactly seq tokens
        examples.append(enc)
    batch = processor.collate(examples).to(device)
    assert batch.input_ids.shape == (s.batch, s.seq), batch.input_ids.shape
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), fused=cuda)
    model.train()

    def step():
        with autocast(torch.device(device), dtype):
            loss = model(batch).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    log("flops: matmul peak")
    peak = matmul_peak(s.matmul_n, repeats=3 if quick else 5, device=device, dtype=dtype)
    log(f"flops: {s.steps} training step(s) after a warm-up step")
    t = compare({"step": step}, repeats=s.steps, warmup=1, device=device)["step"]
    # the load may have changed meanwhile: the higher of two readings
    peak = max(peak, matmul_peak(s.matmul_n, repeats=3 if quick else 5, device=device, dtype=dtype))
    memory = peak_tensor_memory(step, device) if cuda else None
    profile_rows = [] if quick or cuda else _profiled(step)
    flops = model_flops(model.decoder, s.batch * s.seq, s.seq)
    achieved = flops / t.best
    params = sum(p.numel() for p in model.decoder.parameters())
    dtype_name = str(dtype).replace("torch.", "")
    section.row(**{"what": f"matmul {s.matmul_n}x{s.matmul_n} {dtype_name}, best", "GFLOP/s": peak / 1e9})
    section.row(**{"what": f"training step, Llama {s.decoder['hidden_size']}x{s.decoder['num_hidden_layers']} "
                           f"({params / 1e6:.0f}M params), {s.batch}x{s.seq} tokens, best of {s.steps}",
                   "GFLOP/s": achieved / 1e9, "step ms": ms(t.best), "model GFLOP": flops / 1e9,
                   "tokens/s": s.batch * s.seq / t.best, "fraction of peak": achieved / peak,
                   **({"peak memory MiB": round(memory / 2**20)} if memory is not None else {})})
    section.keys["train_flops_fraction_of_matmul_peak"] = achieved / peak
    section.keys["train_tokens_per_second"] = s.batch * s.seq / t.best
    section.keys["train_achieved_flops"] = achieved
    section.keys["matmul_peak_flops"] = peak
    where = f"{torch.get_num_threads()} torch threads" if not cuda else torch.cuda.get_device_name(device)
    section.note(f"{where}; the matmul peak was read before and after the steps and the higher kept")
    if profile_rows:
        section.tables["Where a step's time goes (torch.profiler, one more step, by own CPU time)"] = profile_rows
    return section


def _profiled(step) -> list[dict]:
    """Run ``step`` under the profiler; the ops with the most own CPU time, grouped by kind."""
    from torch.profiler import ProfilerActivity, profile

    from bench.common import _quiet_native_stderr

    start = time.perf_counter()
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [{"op": e.key, "calls": e.count, "own ms": round(e.self_cpu_time_total / 1000, 1),
             "share": round(e.self_cpu_time_total / total, 3)} for e in events]
    rows.sort(key=lambda r: -r["own ms"])
    matmul = sum(r["share"] for r in rows if r["op"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"))
    attention = sum(r["share"] for r in rows if "scaled_dot_product" in r["op"] or "flash_attention" in r["op"])
    rows = rows[:10]
    rows.append({"op": f"(all matrix products: {matmul:.0%} of CPU time; attention kernels: {attention:.0%}; "
                       f"profiled step {wall:.1f} s)"})
    return rows
