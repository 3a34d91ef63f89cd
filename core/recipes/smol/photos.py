"""Photos, which the starter cannot see: it should say so instead of describing one as shapes.

The starter's vision side learnt simple coloured shapes, handwritten digits and clips of a moving shape.
Shown a photo, a model tuned on those only answers as if it were one of them (the astronaut photo came back as
"a large purple circle at the top left"). These records teach the answer :data:`UNSURE` to any picture
question about a photo: random square crops of the photos scikit-image and scikit-learn ship (offline), asked
the mix's own picture questions. The photos a user is likeliest to try first (the astronaut, the cat, the
coffee cup...) are held out for the test split, so its score says whether the model tells photos from its
pictures, not whether it remembers these.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from mmassist.core.recipes.bundled.common import llava_record, plain_question, read_jsonl, replace_jsonl

UNSURE = ("I can't tell. This looks like a photo, and I have only learned to see simple coloured shapes, "
          "handwritten digits and short clips of a moving shape.")
SIZE = 64  # as the mix's pictures
FACES = 100  # of scikit-image's 200 small faces (lfw_subset), the first half for training
GENERIC = ("What is in this picture?", "Describe this photo.", "What do you see?", "What is this?",
           "Describe the picture.", "What is in the image?")


# Which photos each split draws from, none in both: scikit-image's by name, scikit-learn's two sample photos
# (china, flower), and halves of scikit-image's 200 small faces. Not scikit-image's "text": its handwritten
# characters are digits' look-alikes.
SOURCES = {
    "train": ["camera", "brick", "clock", "coins", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
              "moon", "page", "retina", "rocket", "microaneurysms", "flower", "faces-train"],
    "test": ["astronaut", "chelsea", "coffee", "stereo_motorcycle", "china", "faces-test"],
}


def load(source: str) -> list[np.ndarray]:
    """The photos (uint8 arrays) of one name of :data:`SOURCES`."""
    from skimage import data

    if source in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        return [load_sample_images().images[("china", "flower").index(source)]]
    if source.startswith("faces-"):
        faces = data.lfw_subset()
        part = faces[:FACES] if source == "faces-train" else faces[FACES:]
        return [(f * 255).astype(np.uint8) for f in part]
    image = getattr(data, source)()
    # stereo_motorcycle is (left, right, disparity): the two photos.
    return [i for i in image if i.dtype == np.uint8] if isinstance(image, tuple) else [image]


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _crop(image: np.ndarray, rng: random.Random) -> Image.Image:
    """A random square crop (a third of the shorter side or more), flipped half the time, :data:`SIZE` wide."""
    h, w = image.shape[:2]
    side = rng.randint(max(8, min(h, w) // 3), min(h, w))
    top, left = rng.randint(0, h - side), rng.randint(0, w - side)
    crop = Image.fromarray(_rgb(image[top:top + side, left:left + side]))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR)


def picture_questions(root: Path) -> list[str]:
    """Every distinct question the mix's training split asks about a picture, and a few generic ones."""
    asked = {plain_question(r["conversations"][0]["value"]) for r in read_jsonl(root / "mix_train.jsonl")
             if "image" in r}
    return sorted(asked | set(GENERIC))


def build(root: Path, split: str, count: int, *, seed: int = 0) -> Path:
    """``count`` records of ``split`` (``photo-<split>-NNNNN``, answer :data:`UNSURE`) in
    ``root/smol_photos_<split>.jsonl``, their crops under ``root/photos/<split>/``; kept when already built."""
    out = root / f"smol_photos_{split}.jsonl"
    if out.is_file() and len(read_jsonl(out)) == count:
        return out
    rng = random.Random(f"{seed}-{split}")
    groups = [load(source) for source in SOURCES[split]]
    questions = picture_questions(root)
    folder = root / "photos" / split
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        image = rng.choice(groups[i % len(groups)])  # each source as often (the faces are one, not a hundred)
        name = f"photos/{split}/{i:05d}.png"
        _crop(image, rng).save(root / name)
        records.append(llava_record(f"photo-{split}-{i:05d}", rng.choice(questions), UNSURE, {"image": name}))
    return replace_jsonl(out, records)
