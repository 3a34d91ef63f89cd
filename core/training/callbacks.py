"""Watching and steering a fine-tune: a state object, a control object and callback hooks.

Progress reporting is kept out of the training loop: ``core.finetune`` calls the ``on_*`` methods
of every callback it is given, and stops cleanly at the next step once a callback sets
``control.should_stop``. This is how the CLI draws its progress bar and the UI its loss plot.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class TrainerState:
    """Where a fine-tune is. Read-only for callbacks."""

    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    lr: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    metric_name: str = "loss"
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    is_main_process: bool = True
    # What the run is doing: "training", "validating", "testing" or "saving" (see on_phase).
    phase: str = "training"


@dataclass
class TrainerControl:
    """What callbacks may ask for: ``should_stop`` ends the run after the current step, cleanly
    (a final checkpoint and the test report are still written)."""

    should_stop: bool = False


class TrainerCallback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None: ...

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None: ...

    def on_evaluate(self, state: TrainerState, control: TrainerControl, metrics: dict[str, Any]) -> None: ...

    def on_save(self, state: TrainerState, control: TrainerControl, path: str) -> None: ...

    def on_phase(self, state: TrainerState, control: TrainerControl, done: int, total: int) -> None:
        """Progress within ``state.phase`` outside the training steps: ``done`` of ``total`` batches
        evaluated ("validating", "testing"), or 0 of 1 when the final model is being written ("saving")."""

    def on_train_end(self, state: TrainerState, control: TrainerControl) -> None: ...

    def on_exception(self, state: TrainerState, control: TrainerControl, error: BaseException) -> None: ...


class ProgressPrinter(TrainerCallback):
    """A one-line progress bar (the step, or the batches of an evaluation) and a line of metrics per
    evaluation: what ``core.finetune`` shows unless ``progress=False``, and the CLI. On a stream that is not
    a terminal (a log file) it writes a whole line at most every ``log_interval`` seconds instead."""

    def __init__(self, stream: TextIO | None = None, width: int = 30, log_interval: float = 30.0):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else log_interval
        self._last = 0.0

    def _show(self, text: str, last: bool) -> None:
        now = time.time()
        if now - self._last < self.interval and not last:
            return
        self._last = now
        self.stream.write(f"\r{text}\x1b[K" if self.tty else f"{text}\n")
        self.stream.flush()

    def _bar(self, done: float) -> str:
        return "[" + ("#" * int(done * self.width)).ljust(self.width) + "]"

    def on_step_end(self, state, control):
        if not state.is_main_process:
            return
        done = state.step / max(state.max_steps, 1)
        elapsed = time.time() - state.started
        eta = elapsed / max(done, 1e-9) - elapsed
        loss = f"{state.loss:.4f}" if state.loss is not None else "-"
        self._show(f"{self._bar(done)} {state.step}/{state.max_steps} loss {loss} lr {state.lr or 0:.2e} "
                   f"{elapsed:.0f}s<{eta:.0f}s", last=state.step >= state.max_steps)

    def on_phase(self, state, control, done, total):
        if state.is_main_process:
            what = "saving the model" if state.phase == "saving" else f"{state.phase} {done}/{total} batches"
            self._show(f"{self._bar(done / max(total, 1))} step {state.step}: {what}",
                       last=done == total or state.phase == "saving")

    def on_evaluate(self, state, control, metrics):
        if state.is_main_process:
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self.stream.write(("\n" if self.tty else "") + f"step {state.step} epoch {state.epoch:.2f} "
                              f"validation: {shown}\n")
            self.stream.flush()

    def on_train_end(self, state, control):
        if state.is_main_process and self.tty:
            self.stream.write("\n")
            self.stream.flush()
