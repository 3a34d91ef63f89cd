"""``shapes``: pictures of 1-3 simple shapes on a 3 x 3 grid, with template captions and questions.

Every picture is drawn from a scene record (``scenes.jsonl``): per shape its kind, colour, size,
grid cell and pixel box. Captions and answers are canonical strings derived from the scene, so a
model's output can be checked by exact match. No two pictures share a caption, so no test scene
repeats a training scene (each part of it does, in other combinations).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mmassist.core.recipes.bundled.common import SPLITS, Built, count_words, llava_record, split_sizes, write_jsonl

SEED = 1
IMAGE_SIZE = 64
COUNTS = (2400, 300, 300)
QUESTIONS_PER_IMAGE = 2
# Each training picture also has drills: up to DRILL_QUESTIONS more questions, of every kind the picture
# answers, asked DRILL_TURNS to a conversation (the picture shown in its first turn). With two single
# questions per picture a model learned every attribute (its captions were right) but not which shape
# has which colour, size or cell. Short conversations: every batch is padded to its longest record.
# The drills use their own random stream, so the pictures and the held-out questions do not depend on them.
# After one question of every kind, the drills ask more "where is the (colour) shape?" and "is there a
# <colour> <shape>?" first: binding a colour and a kind to a place was what the fourth starter got wrong
# (0.36-0.68 on those, 0.93-1.00 on the other kinds).
DRILL_QUESTIONS = 10
DRILL_TURNS = 4
DRILL_FIRST_AGAIN = ("where", "exists")
DRILL_SEED = 2
BACKGROUND = (24, 24, 24)
KINDS = ("circle", "square", "triangle")
# Far apart in RGB and each with a common English name.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 210, 30),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
# Weights of 1, 2 and 3 shapes per picture.
SHAPE_COUNT_WEIGHTS = (1, 2, 2)


def extent_range(size: str, image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """The side (in pixels) of a shape's box: small about 1/8 of the picture, large about 1/4."""
    base = round(image_size * (0.125 if size == "small" else 0.25))
    return base - 1, base + 1


def cell_name(row: int, col: int) -> str:
    """``top left``, ``top``, ``top right``, ``left``, ``center``, ``right``, ``bottom left``, ..."""
    if row == 1:
        return COLUMNS[col]
    return ROWS[row] if col == 1 else f"{ROWS[row]} {COLUMNS[col]}"


def cell_phrase(row: int, col: int) -> str:
    """The cell as a caption says it: ``at the top left``, ``on the left``, ``in the center``..."""
    name = cell_name(row, col)
    if name == "center":
        return "in the center"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"at the {name}"


@dataclass(frozen=True)
class Shape:
    """One shape: what it is, its grid cell and its box (top-left ``x``, ``y`` and side ``extent``)."""

    kind: str
    colour: str
    size: str
    row: int
    col: int
    x: int
    y: int
    extent: int

    @property
    def position(self) -> str:
        return cell_name(self.row, self.col)


@dataclass(frozen=True)
class Scene:
    """The shapes of one picture, left to right (then top to bottom)."""

    shapes: tuple[Shape, ...]

    def to_dict(self) -> dict:
        return {"shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, value: dict) -> "Scene":
        return cls(tuple(Shape(**s) for s in value["shapes"]))


def sample_scene(rng: random.Random, image_size: int = IMAGE_SIZE) -> Scene:
    """1-3 shapes in distinct grid cells, each jittered inside its cell so none overlap."""
    n = rng.choices((1, 2, 3), weights=SHAPE_COUNT_WEIGHTS)[0]
    cells = rng.sample(range(9), n)
    cell = image_size / 3
    shapes = []
    for index in cells:
        row, col = divmod(index, 3)
        size = rng.choice(SIZES)
        extent = rng.randint(*extent_range(size, image_size))
        slack = int(cell - extent) // 2 - 1  # keeps a 1-pixel gap to the cell's edges
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        x = round(cx - extent / 2) + rng.randint(-slack, slack)
        y = round(cy - extent / 2) + rng.randint(-slack, slack)
        shapes.append(Shape(rng.choice(KINDS), rng.choice(tuple(COLOURS)), size, row, col, x, y, extent))
    shapes.sort(key=lambda s: (s.col, s.row))
    return Scene(tuple(shapes))


def draw_shape(pixels: np.ndarray, kind: str, x: int, y: int, extent: int, rgb: tuple[int, int, int]) -> None:
    """Paint one shape into ``pixels`` (H, W, 3) uint8, in place, inside the box at ``x``, ``y``."""
    h, w = pixels.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    u = (xs - x + 0.5) / extent  # 0..1 across the box
    v = (ys - y + 0.5) / extent
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if kind == "circle":
        mask = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif kind == "square":
        mask = inside
    elif kind == "triangle":  # apex at the top middle, base along the bottom
        mask = inside & (np.abs(u - 0.5) <= v / 2)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; known: {', '.join(KINDS)}")
    pixels[mask] = rgb


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The picture of a scene: (H, W, 3) uint8."""
    pixels = np.empty((image_size, image_size, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    for s in scene.shapes:
        draw_shape(pixels, s.kind, s.x, s.y, s.extent, COLOURS[s.colour])
    return pixels


def describe(shape: Shape) -> str:
    return f"a {shape.size} {shape.colour} {shape.kind} {cell_phrase(shape.row, shape.col)}"


def caption(scene: Scene) -> str:
    """``a large red circle at the top left and a small blue square at the bottom right``."""
    parts = [describe(s) for s in scene.shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# -- questions: each returns (question, answer), or None where the scene cannot answer it uniquely --


def _count(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    return "How many shapes are there?", count_words(len(scene.shapes))


def _pick(options: list[tuple[str, str]], rng: random.Random) -> tuple[str, str] | None:
    return rng.choice(options) if options else None


def question_template(question: str) -> str:
    """A shape question with its colour, shape and cell replaced by placeholders, so answers can be
    counted per kind of question: ``Where is the red circle?`` -> ``Where is the <colour> <shape>?``,
    ``What shape is at the top left?`` -> ``What shape is <cell>?``."""
    words = re.sub(r"\b(%s)\b" % "|".join(COLOURS), "<colour>", question)
    words = re.sub(r"\b(%s)\b" % "|".join(KINDS), "<shape>", words)
    cells = sorted({cell_phrase(r, c) for r in range(3) for c in range(3)}, key=len, reverse=True)
    return re.sub("|".join(re.escape(c) for c in cells), "<cell>", words)


def _colour_questions(scene: Scene) -> list[tuple[str, str]]:
    return [(f"What colour is the {kind}?", _only(scene, kind=kind).colour) for kind in _unique_kinds(scene)]


def _size_questions(scene: Scene) -> list[tuple[str, str]]:
    return [(f"Is the {kind} large or small?", _only(scene, kind=kind).size) for kind in _unique_kinds(scene)]


def _shape_at_questions(scene: Scene) -> list[tuple[str, str]]:
    # Only cells no other shape could be read into: "on the left" is not asked when a shape is
    # also at the top left.
    clear = [s for s in scene.shapes
             if not any(set(s.position.split()) & set(o.position.split()) for o in scene.shapes if o is not s)]
    return [(f"What shape is {cell_phrase(s.row, s.col)}?", s.kind) for s in clear]


def _colour_of(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    return _pick(_colour_questions(scene), rng)


def _size_of(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    return _pick(_size_questions(scene), rng)


def _shape_at(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    return _pick(_shape_at_questions(scene), rng)


def _exists(scene: Scene, rng: random.Random, with_colour: bool | None = None) -> tuple[str, str]:
    if with_colour is None:
        with_colour = rng.random() < 0.5
    present = {(s.colour, s.kind) if with_colour else s.kind for s in scene.shapes}
    every = [(c, k) for c in COLOURS for k in KINDS] if with_colour else list(KINDS)
    absent = [t for t in every if t not in present]
    want_yes = rng.random() < 0.5 or not absent
    thing = rng.choice(sorted(present) if want_yes else absent)
    name = " ".join(thing) if with_colour else thing
    return f"Is there a {name}?", "yes" if want_yes else "no"


def _where_questions(scene: Scene) -> list[tuple[str, str]]:
    options = []
    for s in scene.shapes:
        if sum(o.kind == s.kind for o in scene.shapes) == 1:
            options.append((f"Where is the {s.kind}?", s.position))
        elif sum((o.kind, o.colour) == (s.kind, s.colour) for o in scene.shapes) == 1:
            options.append((f"Where is the {s.colour} {s.kind}?", s.position))
    return options


def _where(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    return _pick(_where_questions(scene), rng)


QUESTIONS: dict[str, Callable[[Scene, random.Random], tuple[str, str] | None]] = {
    "count": _count, "colour": _colour_of, "size": _size_of, "shape_at": _shape_at,
    "exists": _exists, "where": _where,
}


def questions(scene: Scene, rng: random.Random, k: int = QUESTIONS_PER_IMAGE) -> list[tuple[str, str]]:
    """``k`` questions of different kinds the scene answers uniquely, with their canonical answers."""
    kinds = list(QUESTIONS)
    rng.shuffle(kinds)
    out = []
    for kind in kinds:
        qa = QUESTIONS[kind](scene, rng)
        if qa is not None:
            out.append(qa)
        if len(out) == k:
            break
    return out


def drill(scene: Scene, rng: random.Random, k: int = DRILL_QUESTIONS) -> list[tuple[str, str]]:
    """Up to ``k`` different questions about one scene, every kind it answers first (in random order),
    then more of the kinds with several (the colour of each shape, where each one is...), those of
    :data:`DRILL_FIRST_AGAIN` first."""
    exists = [_exists(scene, rng, with_colour=True) for _ in range(3)] + [_exists(scene, rng, with_colour=False)]
    pools = {"count": [_count(scene, rng)], "colour": _colour_questions(scene), "size": _size_questions(scene),
             "shape_at": _shape_at_questions(scene), "where": _where_questions(scene),
             "exists": list(dict.fromkeys(exists))}
    for pool in pools.values():
        rng.shuffle(pool)
    kinds = [kind for kind in pools if pools[kind]]
    rng.shuffle(kinds)
    out = []
    while kinds and len(out) < k:
        for kind in list(kinds):
            out.append(pools[kind].pop())
            if not pools[kind]:
                kinds.remove(kind)
            if len(out) == k:
                break
        kinds.sort(key=lambda kind: kind not in DRILL_FIRST_AGAIN)  # stable: random order within each group
    return out


def _unique_kinds(scene: Scene) -> list[str]:
    kinds = [s.kind for s in scene.shapes]
    return sorted(k for k in set(kinds) if kinds.count(k) == 1)


def _only(scene: Scene, kind: str) -> Shape:
    (shape,) = [s for s in scene.shapes if s.kind == kind]
    return shape


def drill_record(record_id: str, qas: list[tuple[str, str]], file: str) -> dict:
    """A LLaVA record asking ``qas`` in turn about the picture ``file`` (shown in the first turn)."""
    (q, a), *rest = qas
    rec = llava_record(record_id, q, a, {"image": file})
    for q, a in rest:
        rec["conversations"] += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return rec


# -- the builder --------------------------------------------------------------------------------------


def build(out: Path, *, small: bool = False) -> Built:
    """Write ``images/``, ``scenes.jsonl``, per split ``captions_{split}.jsonl``, ``qa_{split}.jsonl``, and
    ``drills_train.jsonl``."""
    from PIL import Image

    sizes = split_sizes(COUNTS, small)
    rng = random.Random(SEED)
    (out / "images").mkdir()
    scenes, seen = [], set()
    while len(scenes) < sum(sizes.values()):
        scene = sample_scene(rng)
        text = caption(scene)
        if text not in seen:  # each caption once, so splits share no scene
            seen.add(text)
            scenes.append(scene)

    counts, start, records, drills = {}, 0, [], []
    drill_rng = random.Random(DRILL_SEED)
    for split in SPLITS:
        caps, qas = [], []
        for i in range(start, start + sizes[split]):
            file = f"images/{i:05d}.png"
            Image.fromarray(render(scenes[i])).save(out / file)
            scene = scenes[i]
            records.append({"file": file, "split": split, **scene.to_dict()})
            caps.append({"file": file, "caption": caption(scene)})
            for j, (q, a) in enumerate(questions(scene, rng)):
                qas.append(llava_record(f"shapes-{i:05d}-{j}", q, a, {"image": file}))
            if split == "train":
                asked = drill(scene, drill_rng)
                for j in range(0, len(asked), DRILL_TURNS):
                    drills.append(drill_record(f"shapes-drill-{i:05d}-{j // DRILL_TURNS}", asked[j: j + DRILL_TURNS], file))
        start += sizes[split]
        write_jsonl(out / f"captions_{split}.jsonl", caps)
        write_jsonl(out / f"qa_{split}.jsonl", qas)
        counts[split] = {"images": len(caps), "captions": len(caps), "qa": len(qas)}
    write_jsonl(out / "drills_train.jsonl", drills)
    counts["train"]["drills"] = len(drills)
    write_jsonl(out / "scenes.jsonl", records)

    colours = ", ".join(COLOURS)
    return Built(
        description=(
            f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB pictures of 1-3 shapes ({', '.join(KINDS)}; {colours}; "
            "small or large) in distinct cells of a 3 x 3 grid (top left, top, top right, left, center, "
            "right, bottom left, bottom, bottom right), on a dark background. Captions name every shape "
            "left to right, e.g. \"a large red circle at the top left and a small blue square at the "
            "bottom right\". Each picture has two questions of different kinds (count, colour of a shape, "
            "size, shape in a cell, is there a ..., where is ...) with one-word canonical answers; "
            "a question is asked only when the picture answers it uniquely. Each training picture also has "
            f"drills: up to {DRILL_QUESTIONS} more such questions, every kind the picture answers first, asked "
            f"{DRILL_TURNS} to a conversation. No two pictures share a "
            "caption, so the splits share no scene."
        ),
        seed=SEED,
        counts=counts,
        files={
            "images/NNNNN.png": "the pictures",
            "scenes.jsonl": "per picture: file, split and each shape's kind, colour, size, grid row/col and box",
            "captions_{split}.jsonl": "{\"file\", \"caption\"} per picture",
            "qa_{split}.jsonl": "LLaVA records, one question and answer each",
            "drills_train.jsonl": f"LLaVA records, training pictures only: up to {DRILL_TURNS} questions in turn",
        },
    )
