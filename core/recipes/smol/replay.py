"""Replay data: the pretrained LM's own answers to general prompts, generated once and cached.

Mixed into the starter's training so that LoRA on the bundled tasks does not unlearn conversing (LLaVA mixes
ShareGPT conversations for the same reason). Greedy with the starter's generation settings, so the same
package and prompts give the same file; written a batch at a time, so a stopped run continues where it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from mmassist.core.cache import cache_dir
from mmassist.core.recipes.bundled.common import llava_record, replace_jsonl
from mmassist.core.runtime.assistant import Assistant

# Answers generated so far, shipped with the recipe (answers-<settings key>.jsonl): they take an hour of CPU
# to make, and a later run goes on from them.
SHIPPED = Path(__file__).resolve().parent
MAX_NEW_TOKENS = 128
BATCH = 32
# The starter's generation settings (recipe.yaml): greedy, with a mild repetition penalty, which keeps this
# small LM from looping (measured on the replay prompts: poems repeated a line without it).
GENERATION = {"temperature": 0.0, "repetition_penalty": 1.15}


def settings_key(decoder: str, prompts: Sequence[str], generation: dict) -> str:
    h = hashlib.sha256(json.dumps([decoder, list(prompts), generation], sort_keys=True).encode())
    return h.hexdigest()[:16]


def generate_answers(decoder: str, prompts: Sequence[str], out: Path, *, generation: dict | None = None,
                     batch: int = BATCH, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """``[{"prompt", "answer", "finished"}]`` for every prompt, appended to ``out`` (JSONL) as they are made;
    prompts already in ``out`` are not generated again. ``finished`` is False for an answer cut at
    ``max_new_tokens`` (loops and rambles; left out of the training mix)."""
    generation = {"max_new_tokens": MAX_NEW_TOKENS, **GENERATION, **(generation or {})}
    done: dict[str, dict] = {}
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["prompt"]] = row
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    if todo:
        asst = Assistant.from_pretrained(decoder)
        gen = dataclasses.replace(asst.cfg.generation, **generation)
        todo.sort(key=len)  # similar lengths batch with less padding
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch):
                chunk = todo[start:start + batch]
                encoded = [asst.processor.encode(asst.processor.conversation(p), add_generation_prompt=True)
                           for p in chunk]
                for p, answer in zip(chunk, asst.generate_batch(encoded, gen)):
                    n = len(asst.tokenizer(answer, add_special_tokens=False)["input_ids"])
                    row = {"prompt": p, "answer": answer.strip(), "finished": n < gen.max_new_tokens - 1}
                    done[p] = row
                    f.write(json.dumps(row) + "\n")
                f.flush()
                if progress is not None:
                    progress(min(start + batch, len(todo)), len(todo))
    return [done[p] for p in prompts]


def trimmed(row: dict) -> str | None:
    """A row's answer as it is trained on: a finished answer as it is; one cut at ``max_new_tokens`` up to
    its last full sentence, when that keeps more than half of it (a shorter answer is a better lesson for a
    small model than a rambling one); else None."""
    answer = row["answer"].strip()
    if row["finished"]:
        return answer or None
    end = max(answer.rfind(m) for m in (". ", ".\n", "! ", "? "))
    return answer[:end + 1].strip() if end > len(answer) // 2 else None


def replay_records(rows: Sequence[dict], prefix: str = "replay") -> list[dict]:
    """LLaVA-style one-turn records of the answers :func:`trimmed` keeps."""
    out = []
    for r in rows:
        answer = trimmed(r)
        if answer:
            out.append(llava_record(f"{prefix}-{len(out):05d}", r["prompt"], answer, {}))
    return out


def build_replay(decoder: str, prompts: Sequence[str], generation: dict | None = None,
                 root: Path | None = None) -> Path:
    """The replay records file for ``prompts`` (generated on first use, then cached), as a JSONL path."""
    key = settings_key(decoder, prompts, generation or {})
    root = Path(root) if root is not None else cache_dir("replay")
    answers = root / f"answers-{key}.jsonl"
    target = root / f"replay-{key}.jsonl"
    if target.is_file():
        return target
    shipped = SHIPPED / answers.name
    if shipped.is_file() and (not answers.is_file() or answers.stat().st_size < shipped.stat().st_size):
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, answers)  # the answers generated where the recipe was written: the rest continue
    start = time.time()

    def progress(i, n):
        print(f"replay: {i}/{n} answers ({time.time() - start:.0f} s)", flush=True)

    rows = generate_answers(decoder, prompts, answers, generation=generation, progress=progress)
    return replace_jsonl(target, replay_records(rows))
