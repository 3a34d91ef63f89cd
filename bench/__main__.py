"""``python -m bench``: mmassist's speed and hardware-use measurements (issue 8).

    python -m bench                      # everything, a few minutes on a 2-core CPU
    python -m bench --quick --json       # tiny sizes, one repeat: under a minute, one JSON object
    python -m bench --only video --only generate
    python -m bench --only generate --model starter   # a trained model's generation figures
    python -m bench --threads 1          # steadier figures on a machine other jobs are using

Every measurement compares against its baseline in the same process; ``bench/README.md`` holds a
results table and what each figure means. ``python -m bench.gpu_check`` runs them on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from bench import KEYS, TARGETS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; never wait for it

SECTIONS = ("video", "finetune", "generate", "scaling", "flops", "serve", "tasks")
__all__ = ["KEYS", "TARGETS", "SECTIONS", "main"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="mmassist's speed and hardware use, "
                                     "each measured against a baseline in the same process (issue 8)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="NAME",
                        help=f"run only this measurement (repeatable): {', '.join(SECTIONS)}")
    parser.add_argument("--model", default=None, metavar="NAME_OR_FOLDER",
                        help="generate: measure this trained model (e.g. starter) instead of a built one")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: PyTorch's, one per core; 1 with --quick)")
    args = parser.parse_args(argv)
    if args.threads is None and args.quick:
        args.threads = 1  # tiny ops on several threads mostly wait for each other, and for a busy machine
    return args


def run(args: argparse.Namespace) -> dict:
    import importlib

    import torch

    from bench.common import finite, log, machine_info

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = machine_info()
    result: dict = {"quick": args.quick, "machine": machine, "sections": {}, "errors": {}}
    for name in args.only or SECTIONS:
        log(f"== {name}")
        start = time.perf_counter()
        try:
            extra = {"model": args.model} if name == "generate" and args.model else {}
            section = importlib.import_module(f"bench.{name}").run(quick=args.quick, **extra)
        except Exception:
            result["errors"][name] = traceback.format_exc()
            log(result["errors"][name])
            continue
        section.seconds = time.perf_counter() - start
        result["sections"][name] = section.to_dict()
        for key, value in section.keys.items():
            result[key] = value if finite(value) else None
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return result


def report(result: dict) -> str:
    """The results as Markdown: machine, targets, then each measurement's tables and notes."""
    from bench.common import finite, markdown_table

    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, load average "
             f"{m['load_average_1m']} at the start and {result['load_average_1m_end']} at the end; "
             f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, timm {m['timm']}, "
             f"decord {m['decord']}, PyAV {m['av']}" + (" (--quick)" if result["quick"] else "")]
    load = max(m["load_average_1m"] or 0, result["load_average_1m_end"] or 0)
    if m["cores"] and load > m["cores"] / 2:
        lines.append(f"\nOther work was running on the machine (load average up to {load} on {m['cores']} cores): "
                     "times are noisy, and torch threads competing with it for cores make small ops much slower; "
                     "--threads 1 gives steadier figures there.")
    rows = []
    for key, op, bound in TARGETS:
        value = result.get(key)
        met = finite(value) and (value >= bound if op == ">=" else value <= bound)
        rows.append({"key": key, "value": round(value, 3) if finite(value) else value, "target": f"{op} {bound}",
                     "met": "yes" if met else "no"})
    lines += ["", markdown_table(rows)]
    for name, sec in result["sections"].items():
        lines += ["", f"### {sec['title']} ({sec['seconds']} s)", "", markdown_table(sec["rows"])]
        for title, table in sec["tables"].items():
            lines += ["", f"{title}:", "", markdown_table(table)]
        if sec["notes"]:
            lines += [""] + [f"- {n}" for n in sec["notes"]]
        keys = ", ".join(f"{k} = {v:.3g}" for k, v in sec["keys"].items() if finite(v))
        lines += ["", f"Keys: {keys}"]
    for name, error in result["errors"].items():
        lines += ["", f"### {name}: FAILED", "", "```", error.rstrip(), "```"]
    lines += ["", f"Total {result['seconds']} s."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(report(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
