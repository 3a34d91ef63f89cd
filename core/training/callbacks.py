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

    def on_train_end(self, state: TrainerState, control: TrainerControl) -> None: ...

    def on_exception(self, state: TrainerState, control: TrainerControl, error: BaseException) -> None: ...


class ProgressPrinter(TrainerCallback):
    """A one-line progress bar and a line of metrics per evaluation, for the command line."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30):
        self.stream = stream
        self.width = width
        self._last = 0.0

    def on_step_end(self, state, control):
        now = time.time()
        if not state.is_main_process or (now - self._last < 0.2 and state.step < state.max_steps):
            return
        self._last = now
        done = state.step / max(state.max_steps, 1)
        bar = "#" * int(done * self.width)
        elapsed = now - state.started
        eta = elapsed / max(done, 1e-9) - elapsed
        loss = f"{state.loss:.4f}" if state.loss is not None else "-"
        self.stream.write(f"\r[{bar:<{self.width}}] {state.step}/{state.max_steps} loss {loss} "
                          f"lr {state.lr or 0:.2e} {elapsed:.0f}s<{eta:.0f}s")
        self.stream.flush()

    def on_evaluate(self, state, control, metrics):
        if state.is_main_process:
            shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self.stream.write(f"\nstep {state.step} epoch {state.epoch:.2f} validation: {shown}\n")
            self.stream.flush()

    def on_train_end(self, state, control):
        if state.is_main_process:
            self.stream.write("\n")
            self.stream.flush()
