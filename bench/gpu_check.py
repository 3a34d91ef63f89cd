"""``python -m bench.gpu_check``: the measurements on a CUDA GPU, in bf16, at GPU sizes.

    python -m bench.gpu_check            # fine-tuning vs LLaVA, generation, scaling, FLOPs; Markdown
    python -m bench.gpu_check --json     # one JSON object
    python -m bench.gpu_check --quick    # tiny sizes: does it run at all

It runs the same code as ``python -m bench`` (video decoding is CPU work and stays there) with the
model on the GPU and ``torch.autocast(bfloat16)``, as ``core.finetune`` and ``Assistant`` do on CUDA,
and reports tokens/s, model FLOPs utilisation (against a bf16 matmul measured in the same run,
and against the vendor's dense bf16 peak when the GPU is in :data:`DENSE_BF16_TFLOPS`) and peak
GPU memory (``torch.cuda.max_memory_allocated``).

Without a GPU it says so and exits with status 1. ``--device cpu`` runs the same code paths on
the CPU (bf16 autocast, tiny sizes with ``--quick``) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECTIONS = ("finetune", "generate", "scaling", "flops")
# Vendor dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched against the device name in
# this order; a GPU not listed gets MFU against the measured matmul only.
DENSE_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("GH200", 989.0),
                     ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0),
                     ("A10", 125.0), ("RTX 4090", 165.0))


def vendor_peak(name: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a GPU by its name, or None when it is not in the table."""
    for key, tflops in DENSE_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check",
                                     description="the benchmark's measurements on a CUDA GPU with bf16")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="NAME",
                        help=f"run only this measurement (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the script")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import importlib

    import torch

    from bench.common import finite, log, machine_info

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench.gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}). Run it on a machine with an "
              "NVIDIA GPU and a CUDA build of PyTorch; `python -m bench` measures on the CPU.", file=sys.stderr)
        return 1
    device = args.device
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu (script check)"
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result: dict = {"device": name, "dtype": "bfloat16", "quick": args.quick, "machine": machine_info(),
                    "sections": {}, "errors": {}}
    started = time.perf_counter()
    for section_name in args.only or SECTIONS:
        log(f"== {section_name} on {name}")
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{section_name}")
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            section = module.run(quick=args.quick, device=device, dtype=dtype)
            if device.startswith("cuda"):
                section.keys[f"{section_name}_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except Exception:
            result["errors"][section_name] = traceback.format_exc()
            log(result["errors"][section_name])
            continue
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        section.seconds = time.perf_counter() - start
        if section_name == "flops":
            spec = vendor_peak(name)
            if spec and finite(section.keys.get("train_achieved_flops")):
                section.keys["train_mfu_vs_vendor_peak"] = section.keys["train_achieved_flops"] / spec
                section.note(f"vendor dense bf16 peak of this GPU: {spec / 1e12:.0f} TFLOP/s")
        result["sections"][section_name] = section.to_dict()
        for key, value in section.keys.items():
            result[key] = value if finite(value) else None
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(_report(result))
    return 1 if result["errors"] else 0


def _report(result: dict) -> str:
    from bench.common import finite, markdown_table

    lines = [f"Device: {result['device']}, bf16 autocast; torch {result['machine']['torch']}, "
             f"transformers {result['machine']['transformers']}" + (" (--quick)" if result["quick"] else "")]
    headline = [("train tokens/s", "train_tokens_per_second", "{:.0f}"),
                ("MFU vs measured bf16 matmul", "train_flops_fraction_of_matmul_peak", "{:.1%}"),
                ("MFU vs vendor dense bf16 peak", "train_mfu_vs_vendor_peak", "{:.1%}"),
                ("peak memory, FLOPs step section (GiB)", "flops_peak_memory_gib", "{:.1f}"),
                ("fine-tune speed-up vs LLaVA", "finetune_speedup_vs_llava", "{:.2f}"),
                ("feature cache speed-up", "feature_cache_speedup", "{:.2f}"),
                ("chat / raw generate()", "generate_overhead_vs_hf", "{:.3f}"),
                ("resampler step 64 / 8 frames", "resampler_step_time_ratio_64_vs_8", "{:.2f}")]
    rows = [{"figure": label, "value": fmt.format(result[key])} for label, key, fmt in headline
            if finite(result.get(key))]
    lines += ["", markdown_table(rows)]
    for sec in result["sections"].values():
        lines += ["", f"### {sec['title']} ({sec['seconds']} s)", "", markdown_table(sec["rows"])]
        for title, table in sec["tables"].items():
            lines += ["", f"{title}:", "", markdown_table(table)]
        lines += [f"- {n}" for n in sec["notes"]]
    for section_name, error in result["errors"].items():
        lines += ["", f"### {section_name}: FAILED", "", "```", error.rstrip(), "```"]
    lines += ["", f"Total {result['seconds']} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
