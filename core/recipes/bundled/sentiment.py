"""``sentiment``: SST-2 movie reviews as classification tables and as chat questions.

SST-2's ``train.tsv`` is split into train and validation (a seeded shuffle of its distinct
sentences, the last tenth validation, so the 9 sentences it holds twice stay on one side); its
``dev.tsv`` is the test split, as in the published figures. The reviews are written twice:

- ``{split}.tsv``: ``sentence<TAB>0|1`` as SST-2 ships it, for a ``classification`` task
  (labels ``[negative, positive]``), where the review goes through the text encoder;
- ``qa_{split}.jsonl``: LLaVA records with the review inline in the human turn
  (``Review: ...\\nIs this review positive or negative?`` -> ``positive``), for a chat model. The
  conversation formats have no text-input item, so in chat the review is read by the decoder.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from mmassist.core.recipes.bundled.common import SMALL_COUNTS, Built, llava_record, write_jsonl
from mmassist.core.errors import DataFormatError

SEED = 4
VALIDATION_FRACTION = 0.1
LABELS = ("negative", "positive")
QUESTIONS = ("Is this review positive or negative?",
             "Is the sentiment of this review positive or negative?",
             "Does this review sound positive or negative?")
ENV_SST2_DIR = "MMASSIST_SST2_DIR"


def source_dir() -> Path:
    """The folder with SST-2's ``train.tsv`` and ``dev.tsv``: ``$MMASSIST_SST2_DIR``, the project's
    ``examples/data/sst2``, or the shared data folder beside the project."""
    repo = Path(__file__).resolve().parents[3]  # core/recipes/bundled/sentiment.py in a checkout
    candidates = [Path(os.environ[ENV_SST2_DIR])] if os.environ.get(ENV_SST2_DIR) else []
    candidates += [repo / "examples/data/sst2", repo.parent / "shared/data/sst2"]
    for folder in candidates:
        if (folder / "train.tsv").is_file() and (folder / "dev.tsv").is_file():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DataFormatError(f"the bundled sentiment dataset is built from SST-2's train.tsv and dev.tsv, "
                          f"which are not in {looked}; set {ENV_SST2_DIR} to a folder that has them")


def read_tsv(path: Path) -> list[tuple[str, int]]:
    """``(sentence, 0|1)`` rows of a headerless SST-2 file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("\t")
        if not sep or label not in ("0", "1") or not sentence.strip():
            raise DataFormatError("expected sentence<TAB>0|1", path=str(path), line=number)
        rows.append((sentence, int(label)))
    return rows


def split_rows(train: list[tuple[str, int]], dev: list[tuple[str, int]],
               small: bool) -> dict[str, list[tuple[str, int]]]:
    """Train/validation from SST-2 train by distinct sentence (file order kept), test = dev."""
    sentences = list(dict.fromkeys(s for s, _ in train))
    random.Random(SEED).shuffle(sentences)
    held_out = set(sentences[len(sentences) - round(len(sentences) * VALIDATION_FRACTION):])
    splits = {"train": [r for r in train if r[0] not in held_out],
              "validation": [r for r in train if r[0] in held_out],
              "test": list(dev)}
    if small:
        splits = {s: rows[:n] for (s, rows), n in zip(splits.items(), SMALL_COUNTS)}
    return splits


def question(sentence: str, rng: random.Random) -> str:
    return f"Review: {sentence}\n{rng.choice(QUESTIONS)}"


def build(out: Path, *, small: bool = False) -> Built:
    """Write ``{split}.tsv`` and ``qa_{split}.jsonl``."""
    folder = source_dir()
    train, dev = read_tsv(folder / "train.tsv"), read_tsv(folder / "dev.tsv")
    rng = random.Random(SEED)
    counts = {}
    for split, rows in split_rows(train, dev, small).items():
        with open(out / f"{split}.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{s}\t{label}\n" for s, label in rows)
        qas = [llava_record(f"sentiment-{split}-{i:05d}", question(s, rng), LABELS[label])
               for i, (s, label) in enumerate(rows)]
        write_jsonl(out / f"qa_{split}.jsonl", qas)
        counts[split] = {"reviews": len(rows), "positive": sum(label for _, label in rows), "qa": len(qas)}

    sources = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("train.tsv", "dev.tsv")}
    return Built(
        description=(
            "Movie-review sentences of SST-2 (the Stanford Sentiment Treebank's binary sentence-level "
            "split, Socher et al. 2013, as published in clairett/pytorch-sentiment-classification), "
            "labelled negative (0) or positive (1). SST-2's train.tsv is split by a seeded shuffle of its "
            f"distinct sentences ({VALIDATION_FRACTION:.0%} validation; a sentence it holds twice stays on "
            "one side); its dev.tsv is the test split. Each review is written twice: as a classification "
            "table row, and as a chat question with the review inline (\"Review: ...\\nIs this review "
            "positive or negative?\" -> \"positive\"), since the conversation formats have no text-input item."
        ),
        seed=SEED,
        counts=counts,
        files={
            "{split}.tsv": "sentence<TAB>0|1, no header (SST-2's own format; task labels [negative, positive])",
            "qa_{split}.jsonl": "LLaVA records without media: the review and a question -> negative|positive",
        },
        extra={"source_sha256": sources},
    )
