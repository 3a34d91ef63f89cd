"""What every measurement shares: timing, results, the machine description and table printing.

Timing is wall-clock (``time.perf_counter``): warm-up calls first, then the median of repeats.
Competing variants are timed *interleaved* (A, B, C, A, B, C...) so that a change in the load
of a shared machine hits all of them alike; their ratio is then steadier than their times.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


@dataclass
class Timing:
    """Seconds of each repeat of one measured call: wall clock, and CPU time of the whole process
    (all threads). CPU time well under wall time on a busy machine means waiting for a core."""

    times: list[float]
    cpu_times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times) if self.cpu_times else float("nan")


def synchronize(device: Any = None) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a timer sees all of it."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def compare(fns: Mapping[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1,
            device: Any = None) -> dict[str, Timing]:
    """Time several variants of one job, interleaved round by round (see the module docstring)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(times[name], cpu[name]) for name in fns}


@dataclass
class Section:
    """One measurement's results: headline ``keys`` (name -> number), table rows, more tables, notes."""

    name: str
    title: str
    keys: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # further tables, by title
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, **values: Any) -> None:
        self.rows.append(values)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "keys": self.keys, "rows": self.rows, "tables": self.tables, "notes": self.notes,
                "seconds": round(self.seconds, 1)}


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- memory ---------------------------------------------------------------------------------------


def peak_tensor_memory(fn: Callable[[], Any], device: Any = None) -> int:
    """Peak bytes of tensor memory live during ``fn`` above what was live before it.

    On CUDA, from the allocator's statistics. On the CPU, from the PyTorch profiler's allocation
    events (``profile_memory=True``): exact for tensor memory, blind to what libraries allocate
    outside PyTorch's allocator.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device is not None and str(device).startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # An op's allocations also count in its callers' totals; self_ counts each byte once.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what native code writes to fd 2 (the profiler's start/stop lines) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# -- the machine ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    import importlib

    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception:  # not installed, or broken: say so rather than fail the benchmark
        return "not installed"


def machine_info() -> dict[str, Any]:
    """The machine, the load on it and the versions that matter, for the results table."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("torch", "transformers", "timm", "decord", "av", "numpy"):
        info[name] = _version(name)
    return info


# -- printing -------------------------------------------------------------------------------------


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as a Markdown table; columns in first-seen order."""
    if not rows:
        return ""
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def log(message: str) -> None:
    """Progress on stderr, so that ``--json`` output on stdout stays one clean object."""
    print(message, file=sys.stderr, flush=True)
