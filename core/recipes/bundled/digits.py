"""``digits``: scikit-learn's handwritten digits (``load_digits``), upscaled to small RGB pictures.

The 1,797 8x8 images (UCI "Optical Recognition of Handwritten Digits", 16 grey levels, ink high)
are drawn as dark ink on white and upscaled with nearest-neighbour (each source pixel becomes a
4x4 block), so the pictures hold exactly the original data. The split is stratified: validation
and test hold the same number of images of every digit.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from mmassist.core.recipes.bundled.common import SPLITS, Built, llava_record, write_jsonl

SEED = 2
SCALE = 4  # 8x8 -> 32x32
PER_DIGIT = {"validation": 20, "test": 20}  # the rest of each digit's images train
SMALL_PER_DIGIT = {"train": 4, "validation": 1, "test": 1}
QUESTIONS = ("Which digit is this?", "What number is written here?")


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) ints 0..16, labels (1797,))`` from scikit-learn (shipped with it, offline)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.int64), digits.target.astype(np.int64)


def to_pixels(image: np.ndarray) -> np.ndarray:
    """One 8x8 source image (0..16, ink high) -> (32, 32, 3) uint8, dark ink on white."""
    grey = (255 - np.round(image * 255 / 16)).astype(np.uint8)
    big = grey.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
    return np.stack([big] * 3, axis=-1)


def caption(digit: int) -> str:
    return f"a handwritten digit {digit}"


def split_indices(labels: np.ndarray, small: bool) -> dict[str, list[int]]:
    """Source indices per split: per digit, a seeded shuffle cut into test, validation and train."""
    rng = random.Random(SEED)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = [int(i) for i in np.flatnonzero(labels == digit)]
        rng.shuffle(idx)
        n_test = SMALL_PER_DIGIT["test"] if small else PER_DIGIT["test"]
        n_val = SMALL_PER_DIGIT["validation"] if small else PER_DIGIT["validation"]
        n_train = SMALL_PER_DIGIT["train"] if small else len(idx) - n_test - n_val
        out["test"] += idx[:n_test]
        out["validation"] += idx[n_test:n_test + n_val]
        out["train"] += idx[n_test + n_val:n_test + n_val + n_train]
    return {s: sorted(v) for s, v in out.items()}


def build(out: Path, *, small: bool = False) -> Built:
    """Write ``images/``, ``scenes.jsonl`` and per split ``captions_{split}.jsonl``, ``qa_{split}.jsonl``."""
    from PIL import Image

    images, labels = load_source()
    (out / "images").mkdir()
    counts, records = {}, []
    for split, indices in split_indices(labels, small).items():
        caps, qas = [], []
        for i in indices:
            file = f"images/{i:04d}.png"  # named by the index in load_digits()
            digit = int(labels[i])
            Image.fromarray(to_pixels(images[i])).save(out / file)
            records.append({"file": file, "split": split, "index": i, "digit": digit})
            caps.append({"file": file, "caption": caption(digit)})
            for j, q in enumerate(QUESTIONS):
                qas.append(llava_record(f"digits-{i:04d}-{j}", q, str(digit), {"image": file}))
        write_jsonl(out / f"captions_{split}.jsonl", caps)
        write_jsonl(out / f"qa_{split}.jsonl", qas)
        counts[split] = {"images": len(caps), "captions": len(caps), "qa": len(qas)}
    write_jsonl(out / "scenes.jsonl", records)

    side = 8 * SCALE
    return Built(
        description=(
            f"The handwritten digits of scikit-learn's `load_digits()` (1,797 8x8 images with 16 grey "
            "levels, from the UCI \"Optical Recognition of Handwritten Digits\" data set), drawn as dark "
            f"ink on white and upscaled {SCALE}x with nearest-neighbour to {side}x{side} RGB PNG. Captions "
            "read \"a handwritten digit 7\"; each picture has the questions "
            + " and ".join(f"\"{q}\"" for q in QUESTIONS) + " answered with the digit (\"7\"). "
            "The split is stratified by digit (a seeded shuffle of each digit's images)."
        ),
        seed=SEED,
        counts=counts,
        files={
            "images/NNNN.png": "the pictures, named by their index in load_digits()",
            "scenes.jsonl": "per picture: file, split, index in load_digits() and digit",
            "captions_{split}.jsonl": "{\"file\", \"caption\"} per picture",
            "qa_{split}.jsonl": "LLaVA records, one question and answer each",
        },
    )
