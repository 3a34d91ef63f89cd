"""What every bundled dataset builder shares: split names, record shapes and deterministic writers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

SPLITS = ("train", "validation", "test")
# Fixed counts (train, validation, test) of every dataset's small build, for tests.
SMALL_COUNTS = (40, 10, 10)


@dataclass
class Built:
    """What a builder reports about the files it wrote (the manifest and README are written for it).

    ``counts``: ``{split: {what: n}}``; ``files``: file name pattern -> what it holds;
    ``description``: the README's opening paragraph (Markdown).
    """

    description: str
    seed: int
    counts: dict[str, dict[str, int]]
    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def split_sizes(full: tuple[int, int, int], small: bool) -> dict[str, int]:
    """``{split: count}`` for a full or a small build."""
    return dict(zip(SPLITS, SMALL_COUNTS if small else full))


def llava_record(record_id: str, question: str, answer: str, media: Mapping[str, str] | None = None) -> dict:
    """One LLaVA-style single-turn record; ``media`` is ``{"image": path}`` or ``{"video": path}``."""
    rec: dict[str, Any] = {"id": record_id}
    prompt = question
    for modality, path in (media or {}).items():
        rec[modality] = path
        prompt = f"<{modality}>\n{prompt}"
    rec["conversations"] = [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
    return rec


def plain_question(question: str) -> str:
    """A record's question as a user types it: the ``<image>``/``<video>`` line before it dropped."""
    return question.split("\n", 1)[-1] if question.startswith("<") else question


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, ``\\n`` line ends); return how many."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def replace_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """:func:`write_jsonl` into a temporary sibling, then renamed over ``path``: a reader never sees half a
    file, and a killed writer leaves the old one. Returns ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_jsonl(tmp, records)
    os.replace(tmp, path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file written by :func:`write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, value: Any) -> None:
    """Pretty JSON with a final newline, replaced atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def count_words(n: int) -> str:
    """1 -> "one" ... 9 -> "nine": the canonical answer to a counting question."""
    return ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")[n]
