"""``motion``: short clips of one shape moving left, right, up or down.

Only the order of the frames tells the direction: a clip moving right, played backwards, is a clip
moving left that the generator could equally have drawn (start positions are uniform over ranges
that mirror each other), so a model that pools frames without their order is at chance between
opposite directions. Every clip is drawn from a scene record (``scenes.jsonl``).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmassist.core.contract.testing import write_test_video
from mmassist.core.recipes.bundled.common import SPLITS, Built, llava_record, split_sizes, write_jsonl
from mmassist.core.recipes.bundled.shapes import BACKGROUND, COLOURS, KINDS, draw_shape

SEED = 3
FRAME_SIZE = 64
NUM_FRAMES = 8
FPS = 8
COUNTS = (1000, 100, 100)
EXTENTS = (10, 16)  # the shape's side in pixels, inclusive range
STEPS = (3, 4)  # pixels per frame
MARGIN = 1
# direction -> (dx, dy) per step; image y grows downwards.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIRECTION_QUESTIONS = ("Where does the {kind} move?", "Which way is the shape moving?",
                       "Which way is the {colour} {kind} moving?", "In which direction does the {kind} move?")
ATTRIBUTE_QUESTIONS = {"colour": "What colour is the moving shape?", "kind": "What shape is moving?"}


@dataclass(frozen=True)
class Clip:
    """One clip: the shape, its direction and step, and its box at the first frame (``x``, ``y``)."""

    kind: str
    colour: str
    direction: str
    extent: int
    step: int
    x: int
    y: int
    num_frames: int = NUM_FRAMES

    def position(self, t: int) -> tuple[int, int]:
        """The top-left corner of the shape's box at frame ``t``."""
        dx, dy = DIRECTIONS[self.direction]
        return self.x + dx * self.step * t, self.y + dy * self.step * t

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> "Clip":
        return cls(**value)


def start_range(direction: str, extent: int, step: int, num_frames: int = NUM_FRAMES,
                size: int = FRAME_SIZE) -> tuple[tuple[int, int], tuple[int, int]]:
    """Inclusive ranges of the first frame's ``x`` and ``y`` that keep the shape inside all frames.

    Opposite directions get mirrored ranges: the last positions of one are the first of the other.
    """
    travel = step * (num_frames - 1)
    lo, hi = MARGIN, size - MARGIN - extent
    dx, dy = DIRECTIONS[direction]

    def along(d: int) -> tuple[int, int]:
        return (lo, hi - travel) if d > 0 else (lo + travel, hi) if d < 0 else (lo, hi)

    return along(dx), along(dy)


def sample_clip(rng: random.Random, direction: str) -> Clip:
    """A random shape moving in ``direction``, from a uniform start that keeps it in the frame."""
    extent = rng.randint(*EXTENTS)
    step = rng.randint(*STEPS)
    (x0, x1), (y0, y1) = start_range(direction, extent, step)
    return Clip(rng.choice(KINDS), rng.choice(tuple(COLOURS)), direction, extent, step,
                rng.randint(x0, x1), rng.randint(y0, y1))


def render(clip: Clip) -> np.ndarray:
    """The frames of a clip: (F, H, W, 3) uint8."""
    frames = np.empty((clip.num_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for t in range(clip.num_frames):
        x, y = clip.position(t)
        draw_shape(frames[t], clip.kind, x, y, clip.extent, COLOURS[clip.colour])
    return frames


def direction_phrase(direction: str) -> str:
    return f"to the {direction}" if direction in ("left", "right") else direction


def caption(clip: Clip) -> str:
    """``a red circle moving to the left``, ``a blue square moving up``."""
    return f"a {clip.colour} {clip.kind} moving {direction_phrase(clip.direction)}"


def questions(clip: Clip, rng: random.Random) -> list[tuple[str, str]]:
    """A question about the direction and one about the shape, with their canonical answers."""
    direction_q = rng.choice(DIRECTION_QUESTIONS).format(kind=clip.kind, colour=clip.colour)
    attribute = rng.choice(tuple(ATTRIBUTE_QUESTIONS))
    return [(direction_q, clip.direction), (ATTRIBUTE_QUESTIONS[attribute], getattr(clip, attribute))]


def _codec_options() -> dict:
    import av

    # One thread: x264's output is then the same bytes on every run.
    return {"codec": "libx264", "options": {"crf": "18", "threads": "1"}} if "libx264" in av.codecs_available else {}


def build(out: Path, *, small: bool = False) -> Built:
    """Write ``videos/``, ``scenes.jsonl`` and per split ``captions_{split}.jsonl``, ``qa_{split}.jsonl``."""
    sizes = split_sizes(COUNTS, small)
    rng = random.Random(SEED)
    codec = _codec_options()
    (out / "videos").mkdir()
    counts, records, i = {}, [], 0
    for split in SPLITS:
        directions = [tuple(DIRECTIONS)[k % len(DIRECTIONS)] for k in range(sizes[split])]
        rng.shuffle(directions)  # balanced per split
        caps, qas = [], []
        for direction in directions:
            clip = sample_clip(rng, direction)
            file = f"videos/{i:05d}.mp4"
            write_test_video(out / file, render(clip), fps=FPS, **codec)
            records.append({"file": file, "split": split, **clip.to_dict()})
            caps.append({"file": file, "caption": caption(clip)})
            for j, (q, a) in enumerate(questions(clip, rng)):
                qas.append(llava_record(f"motion-{i:05d}-{j}", q, a, {"video": file}))
            i += 1
        write_jsonl(out / f"captions_{split}.jsonl", caps)
        write_jsonl(out / f"qa_{split}.jsonl", qas)
        counts[split] = {"videos": len(caps), "captions": len(caps), "qa": len(qas)}
    write_jsonl(out / "scenes.jsonl", records)

    return Built(
        description=(
            f"{NUM_FRAMES}-frame {FRAME_SIZE}x{FRAME_SIZE} MP4 clips ({FPS} fps, H.264 when available) of one "
            f"shape ({', '.join(KINDS)}; {', '.join(COLOURS)}) moving {STEPS[0]}-{STEPS[1]} pixels per frame "
            "left, right, up or down on a dark background. Start positions are uniform over ranges that "
            "mirror each other for opposite directions, so a single frame, or the frames without their "
            "order, do not tell left from right or up from down: only the order does. Captions read "
            "\"a red circle moving to the left\"; each clip has a question about the direction "
            "(\"Where does the circle move?\" -> \"left\") and one about the shape (its colour or kind). "
            "Directions are balanced within each split."
        ),
        seed=SEED,
        counts=counts,
        files={
            "videos/NNNNN.mp4": "the clips",
            "scenes.jsonl": "per clip: file, split, kind, colour, direction, extent, step, first-frame box x/y, frames",
            "captions_{split}.jsonl": "{\"file\", \"caption\"} per clip",
            "qa_{split}.jsonl": "LLaVA records, one question and answer each",
        },
        extra={"num_frames": NUM_FRAMES, "fps": FPS, "codec": codec.get("codec", "default")},
    )
