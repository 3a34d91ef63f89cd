"""The Caption tab's logic: caption many files at once, and write the results as CSV and JSONL.

Files are captioned in batches; when a batch fails (a corrupt clip, a file no plugin reads), its
files are captioned one by one so that only the bad ones get an error in their row. When every
file fails, the first error is raised, so the page shows it.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmassist.core.errors import MMAssistError, UnsupportedInputError
from mmassist.ui.models import LoadedModel


@dataclass
class CaptionRow:
    file: str
    caption: str
    error: str = ""


def caption_files(model: LoadedModel, paths: Sequence[str], names: Sequence[str] | None = None,
                  batch_size: int = 8) -> list[CaptionRow]:
    """One row per file: its caption (or label, for a classifier), or the error it raised."""
    if not paths:
        raise UnsupportedInputError("no files to caption; drop one or more images or videos first")
    names = list(names or [Path(p).name for p in paths])
    rows: list[CaptionRow] = []
    first_error: MMAssistError | None = None
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start: start + batch_size])
        try:
            outputs = _run(model, chunk)
            rows += [CaptionRow(n, c) for n, c in zip(names[start: start + len(chunk)], outputs)]
        except MMAssistError:
            for name, path in zip(names[start: start + len(chunk)], chunk):
                try:
                    rows.append(CaptionRow(name, _run(model, [path])[0]))
                except MMAssistError as e:
                    # The file's own name, not the server's copy of it (/tmp/gradio/<hash>/name)
                    rows.append(CaptionRow(name, "", str(e).replace(str(path), name)))
                    first_error = first_error or e
    if first_error is not None and all(r.error for r in rows):
        raise first_error
    return rows


def _run(model: LoadedModel, paths: list[str]) -> list[str]:
    asst = model.assistant
    with model.lock:
        if asst.cfg.task.kind == "classification":
            return [str(label) for label in asst.classify(list(paths))]
        return list(asst.caption(list(paths)))


def write_exports(rows: Sequence[CaptionRow], folder: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``captions.csv`` and ``captions.jsonl`` (file, caption[, error]) into ``folder``, by
    default a new one under the system's temporary folder (those older than a day are removed)."""
    if folder is None:
        parent = Path(tempfile.gettempdir()) / "mmassist-captions"
        parent.mkdir(exist_ok=True)
        _prune(parent, max_age_s=24 * 3600)
        folder = tempfile.mkdtemp(dir=parent)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with_errors = any(r.error for r in rows)
    fields = ["file", "caption", "error"] if with_errors else ["file", "caption"]
    csv_path, jsonl_path = folder / "captions.csv", folder / "captions.jsonl"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in rows:
            writer.writerow([getattr(r, k) for k in fields])
    with jsonl_path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({k: getattr(r, k) for k in fields}, ensure_ascii=False) + "\n")
    return csv_path, jsonl_path


def _prune(parent: Path, max_age_s: float) -> None:
    now = time.time()
    for old in parent.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # removed meanwhile by another request
            pass
