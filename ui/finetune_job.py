"""One fine-tune at a time, in a background thread, watched and stopped through callbacks.

The training loop knows nothing of the UI: :class:`ProgressRecorder` is an ordinary
:class:`mmassist.core.training.callbacks.TrainerCallback` that copies progress (step, loss, evaluation metrics) into
the job, and asks the loop to stop (``control.should_stop``) once the user pressed Stop. The page
polls :meth:`FinetuneJob.snapshot`.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmassist.core.training.callbacks import TrainerCallback, TrainerControl, TrainerState
from mmassist.core.training.finetune import validation_metric
from mmassist.core.runtime.config import FusionConfig
from mmassist.core.errors import MMAssistError
from mmassist.core.contract.host import Host

log = logging.getLogger(__name__)

# What a job is doing; the last three are final.
# validating / testing / saving: the loop's TrainerState.phase, between or after training steps.
PHASES = ("preparing", "training", "validating", "testing", "saving", "done", "stopped", "failed")
FINAL = ("done", "stopped", "failed")
MAX_LOG_LINES = 500


class JobBusyError(MMAssistError):
    """A fine-tune was started while another one runs."""


def planned_series(cfg: FusionConfig) -> list[str]:
    """The plot's lines a run will draw: the training loss, and the validation loss and metric
    when the run has validation data (the names :class:`ProgressRecorder` gives its points)."""
    series = ["train loss"]
    if cfg.data.validation or cfg.data.validation_fraction > 0:
        series += [f"validation {name}" for name in dict.fromkeys(("loss", validation_metric(cfg)))]
    return series


@dataclass
class Snapshot:
    """A consistent copy of a job's progress, safe to read from any thread."""

    run_name: str
    phase: str
    step: int
    max_steps: int
    epoch: float
    loss: float | None
    elapsed: float
    points: list[dict[str, Any]]
    series: list[str]
    metrics: dict[str, Any] | None
    output_dir: str
    error: str | None
    stop_requested: bool
    phase_done: int = 0  # batches of the evaluation under way (validating, testing)
    phase_total: int = 0
    best_step: int | None = None  # the step whose weights the run keeps (its best validation)
    metric: str = "loss"
    log: list[str] = field(default_factory=list)  # what happened, a line per event (the page's log pane)

    @property
    def running(self) -> bool:
        return self.phase not in FINAL


@dataclass
class FinetuneJob:
    """One fine-tune's progress. Written by the training thread, read through :meth:`snapshot`."""

    cfg: FusionConfig
    output_dir: Path
    phase: str = "preparing"
    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    points: list[dict[str, Any]] = field(default_factory=list)  # {"step", "value", "series"} for the plot
    metrics: dict[str, Any] | None = None
    error: str | None = None
    phase_done: int = 0
    phase_total: int = 0
    best_step: int | None = None
    metric: str = "loss"
    init_from: str | None = None  # the model whose weights the run starts from
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ended: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def running(self) -> bool:
        return self.phase not in FINAL

    def update(self, **changes: Any) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self, k, v)

    def note(self, line: str) -> None:
        """Add a line to the job's log, stamped with the time since it started."""
        with self._lock:
            self.log.append(f"[{time.time() - self.started:6.0f} s] {line}")
            del self.log[:-MAX_LOG_LINES]

    def add_point(self, step: int, value: float, series: str) -> None:
        with self._lock:
            self.points.append({"step": step, "value": float(value), "series": series})

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                run_name=self.output_dir.name, phase=self.phase, step=self.step, max_steps=self.max_steps,
                epoch=self.epoch, loss=self.loss, elapsed=(self.ended or time.time()) - self.started,
                points=list(self.points), series=planned_series(self.cfg), metrics=self.metrics,
                output_dir=str(self.output_dir), error=self.error, stop_requested=self.stop_event.is_set(),
                phase_done=self.phase_done, phase_total=self.phase_total, best_step=self.best_step,
                metric=self.metric, log=list(self.log),
            )


class ProgressRecorder(TrainerCallback):
    """Copies the loop's progress into a :class:`FinetuneJob` and honours its stop request."""

    def __init__(self, job: FinetuneJob):
        self.job = job

    def _maybe_stop(self, control: TrainerControl) -> None:
        if self.job.stop_event.is_set():
            control.should_stop = True

    def on_train_begin(self, state: TrainerState, control: TrainerControl) -> None:
        self.job.update(phase="training", max_steps=state.max_steps, step=state.step, metric=state.metric_name,
                        best_step=state.best_step)
        start = f"from step {state.step}" if state.step else "from scratch" if not self.job.init_from \
            else f"from {self.job.init_from}"
        self.job.note(f"training {state.max_steps} steps {start}; validation metric: {state.metric_name}")
        self._maybe_stop(control)

    def on_step_end(self, state: TrainerState, control: TrainerControl) -> None:
        self.job.update(step=state.step, epoch=state.epoch, loss=state.loss, max_steps=state.max_steps,
                        phase="training")
        if state.loss is not None:
            self.job.add_point(state.step, state.loss, "train loss")
        self._maybe_stop(control)

    def on_phase(self, state: TrainerState, control: TrainerControl, done: int, total: int) -> None:
        if self.job.phase != state.phase:
            self.job.note(f"step {state.step}: {state.phase}" + (f" ({total} batches)" if total > 1 else ""))
        self.job.update(phase=state.phase, phase_done=done, phase_total=total)

    def on_evaluate(self, state: TrainerState, control: TrainerControl, metrics: dict[str, Any]) -> None:
        for name in dict.fromkeys(("loss", state.metric_name)):
            value = metrics.get(name)
            if isinstance(value, (int, float)):
                self.job.add_point(state.step, value, f"validation {name}")
        self.job.update(best_step=state.best_step)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        best = " (best so far)" if state.best_step == state.step else ""
        self.job.note(f"step {state.step}: validation {shown}{best}")
        self._maybe_stop(control)

    def on_train_end(self, state: TrainerState, control: TrainerControl) -> None:
        self.job.update(step=state.step, best_step=state.best_step)


class JobRunner:
    """Starts fine-tunes in a background thread, one at a time.

    :param host: the plugin host the runs build their models with.
    """

    def __init__(self, host: Host):
        self.host = host
        self._job: FinetuneJob | None = None
        self._lock = threading.Lock()

    @property
    def job(self) -> FinetuneJob | None:
        """The running job, or the last one."""
        return self._job

    def start(self, cfg: FusionConfig, output_dir: str | Path, init_from: str | Path | None = None) -> FinetuneJob:
        """Start fine-tuning ``cfg`` into ``output_dir`` in the background, from the weights of the model
        ``init_from`` when given (``"starter"`` or a model folder); refuse while a job runs."""
        with self._lock:
            self.check_free()
            job = FinetuneJob(cfg, Path(output_dir), init_from=str(init_from) if init_from else None)
            self._job = job
        threading.Thread(target=self._run, args=(job,), name=f"finetune-{job.output_dir.name}",
                         daemon=True).start()
        return job

    def check_free(self) -> None:
        """Raise :class:`JobBusyError` while a job runs."""
        job = self._job
        if job is not None and job.running:
            raise JobBusyError(f"a fine-tune is already running ({job.output_dir.name}); "
                               "stop it or wait for it to finish, then start again")

    def stop(self) -> bool:
        """Ask the running job to stop after its current step; False when none runs."""
        job = self._job
        if job is None or not job.running:
            return False
        job.stop_event.set()
        return True

    def _run(self, job: FinetuneJob) -> None:
        from mmassist.core.training.finetune import finetune

        try:
            job.note(f"preparing the data and the model ({job.output_dir.name})")
            res = finetune(job.cfg, output_dir=job.output_dir, callbacks=[ProgressRecorder(job)], host=self.host,
                           progress=False, init_from=job.init_from)
            phase = "stopped" if job.stop_event.is_set() else "done"
            job.note(f"{phase}: the model is in {job.output_dir}")
            job.update(metrics=res.metrics, phase=phase, ended=time.time())
        except MMAssistError as e:
            discard_unfinished(job.output_dir)
            job.note(f"failed: {e}")
            job.update(phase="failed", error=str(e), ended=time.time())
        except Exception as e:  # a bug: keep the traceback in the server log, show one line in the page
            log.error("fine-tune %s failed:\n%s", job.output_dir, traceback.format_exc())
            discard_unfinished(job.output_dir)
            job.note(f"failed: {type(e).__name__}: {e}")
            job.update(phase="failed", error=f"{type(e).__name__}: {e}", ended=time.time())


def discard_unfinished(folder: Path) -> None:
    """Remove the folder of a run that failed before it wrote a checkpoint or a model (its copy of the
    uploaded dataset and a few log lines): no empty run folders for the model picker to list."""
    if not (folder / "checkpoints").is_dir() and not (folder / "best").is_dir() \
            and not (folder / "manifest.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
