"""The Fine-tune tab's views of runs, without gradio: the run history, a run's report as tables, a
dataset's preview, a new run's name, and the config of a model to start from.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

from mmassist.core.contract.host import Host
from mmassist.core.data import load_splits
from mmassist.core.errors import ConfigError
from mmassist.core.runtime.config import FusionConfig
from mmassist.core.training.finetune import example_input, reference_answer

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PREVIEW_ROWS = 3
HISTORY_HEADERS = ["run", "task", "state", "steps", "best validation", "last change"]


def run_folder(runs_dir: Path, name: str | None, task: str) -> Path:
    """The folder of a new run: ``runs_dir/<name>`` (a new name: letters, digits, ``.``, ``_``, ``-``), or
    ``runs_dir/<task>-<time>`` when no name is given. Created empty."""
    name = (name or "").strip()
    if not name:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out, n = runs_dir / f"{task}-{stamp}", 2
        while out.exists():
            out, n = runs_dir / f"{task}-{stamp}-{n}", n + 1
    else:
        if not RUN_NAME.match(name):
            raise ConfigError(f"the run name {name!r} may use letters, digits, '.', '_' and '-' only "
                              "(it names a folder under the runs folder)")
        out = runs_dir / name
        if out.exists():
            raise ConfigError(f"a run named {name!r} exists already ({out}); choose another name")
    out.mkdir(parents=True)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def run_history(runs_dir: Path) -> list[list[Any]]:
    """A row per run folder under ``runs_dir``, newest first (see :data:`HISTORY_HEADERS`)."""
    if not runs_dir.is_dir():
        return []
    rows = []
    for run in runs_dir.iterdir():
        if not run.is_dir() or run.name.startswith("."):
            continue
        checkpoints = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
        config = _read_json(run / "config.json") or (_read_json(checkpoints[-1] / "config.json") if checkpoints else {})
        final = _read_json(run / "final_metrics.json")
        if (run / "manifest.json").is_file():
            state = "model saved"
        elif checkpoints:
            state = f"unfinished (checkpoint {checkpoints[-1].name})"
        else:
            state = "no model"
        metric = next((k[: -len("_best")] for k in final if k.endswith("_best")), None)
        best = final.get(f"{metric}_best") if metric else None
        best_text = f"{metric} {best:.4f} (step {final.get('best_step')})" if isinstance(best, (int, float)) else ""
        rows.append([run.name, (config.get("task") or {}).get("kind", ""), state, final.get("steps", ""), best_text,
                     run.stat().st_mtime])
    rows.sort(key=lambda r: r[-1], reverse=True)
    for r in rows:
        r[-1] = time.strftime("%Y-%m-%d %H:%M", time.localtime(r[-1]))
    return rows


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        return html.escape(" ".join(text.split())).replace("|", "&#124;")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def report_markdown(metrics: dict[str, Any] | None) -> str:
    """A run's report as Markdown tables: the scores per split, the per-class (or per-type) table of the
    last split that has one, and a few predictions beside their references."""
    if not metrics:
        return ""
    if metrics.get("error"):
        return f"**Failed:** {html.escape(str(metrics['error']))}"
    splits = [s for s in ("validation", "test") if isinstance(metrics.get(s), dict)]
    out = []
    head = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if head:
        out.append(_table(["", *head], [["run", *head.values()]]))
    if splits:
        names = list(dict.fromkeys(k for s in splits for k, v in metrics[s].items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)))
        out.append(_table(["split", *names], [[s, *(metrics[s].get(n, "") for n in names)] for s in splits]))
    for s in reversed(splits):
        per_class = metrics[s].get("per_class")
        if per_class:
            cols = list(next(iter(per_class.values())))
            rows = [[k, *(v.get(c, "") for c in cols)] for k, v in per_class.items()]
            out.append(f"**{s}, per class**\n\n" + _table(["class", *cols], rows))
            break
    for s in reversed(splits):
        shown = metrics[s].get("samples")
        if shown:
            out.append(f"**{s} examples**\n\n" + _table(["input", "reference", "prediction"],
                                                        [[x["input"], x["reference"], x["prediction"]] for x in shown]))
            break
    return "\n\n".join(out)


def preview_markdown(cfg: FusionConfig, host: Host) -> str:
    """What a run will train and validate on: the examples per split (as the run will carve them), a
    warning when validation is too small to choose the best step, and the first training examples."""
    splits = load_splits(cfg.data, cfg.task, host)
    counts = {k: len(v) for k, v in splits.items()}
    carved = [k for k, given in (("validation", cfg.data.validation), ("test", cfg.data.test))
              if not given and counts[k]]
    lines = [_table(["split", "examples"], [[k + (" (carved from train)" if k in carved else ""), n]
                                            for k, n in counts.items()])]
    if counts["validation"] < 2:
        lines.append(f"⚠ validation has {counts['validation']} example{'s' if counts['validation'] != 1 else ''}: "
                     "too few to pick the best step; raise data.validation_fraction or give a validation file.")
    rows = []
    for e in splits["train"][:PREVIEW_ROWS]:
        target = e.label if e.label is not None else " ".join(e.tags) if e.tags else reference_answer(e)
        rows.append([e.source.rsplit("/", 1)[-1], example_input(e), target])
    lines.append("**First training examples**\n\n" + _table(["where", "input", "target"], rows))
    return "\n\n".join(lines)


def model_config_yaml(folder: Path) -> str:
    """A saved model's config as YAML to fine-tune it further: its architecture, task and settings as
    they are, its data paths cleared (give the new dataset)."""
    import yaml

    data = _read_json(folder / "config.json")
    if not data:
        raise ConfigError(f"{folder} has no readable config.json; give a model folder")
    data["data"] = {k: v for k, v in (data.get("data") or {}).items() if k not in ("train", "validation", "test")}
    header = f"# starts from the weights of {folder}\n"
    return header + yaml.safe_dump(data, sort_keys=False)
