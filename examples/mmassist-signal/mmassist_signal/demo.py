"""A small synthetic dataset to try the plugin with: three-axis accelerometer recordings (50 Hz, 4 s) of
someone resting, walking, running or jumping, as CSV files with a captions file::

    python -m mmassist_signal.demo data/activity          # writes data/activity/{*.csv,captions.jsonl}
    mmassist finetune examples/activity.yaml              # (see README.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RATE = 50
SECONDS = 4
ACTIVITIES = {  # (step frequency in Hz, amplitude in g, spiky)
    "resting": (0.0, 0.0, False),
    "walking": (1.8, 0.4, False),
    "running": (2.8, 1.4, False),
    "jumping": (1.0, 2.5, True),
}


def recording(activity: str, rng: np.random.Generator) -> np.ndarray:
    """(samples, 3) accelerometer readings in g, gravity on z."""
    freq, amp, spiky = ACTIVITIES[activity]
    t = np.arange(RATE * SECONDS) / RATE
    freq *= rng.uniform(0.9, 1.1)
    amp *= rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * t + phase)
    if spiky:
        wave = np.maximum(wave, 0) ** 4 * 2 - 0.3
    xyz = np.stack([0.3 * amp * wave, 0.2 * amp * np.cos(2 * np.pi * freq * t + phase), 1.0 + amp * wave], axis=1)
    return (xyz + rng.normal(0, 0.03, size=xyz.shape)).astype(np.float32)


def activity_dataset(folder: str | Path, per_activity: int = 6, seed: int = 0) -> Path:
    """Write ``per_activity`` recordings of each activity as CSV files and ``captions.jsonl``
    ("a person walking"...) into ``folder``; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(per_activity):
        for activity in ACTIVITIES:
            name = f"{activity}_{i:02d}.csv"
            data = recording(activity, rng)
            lines = "\n".join(",".join(f"{v:.4f}" for v in row) for row in data)
            (folder / name).write_text("x,y,z\n" + lines + "\n", encoding="utf-8")
            rows.append({"file": name, "caption": f"a person {activity}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


if __name__ == "__main__":
    print(activity_dataset(sys.argv[1] if len(sys.argv) > 1 else "activity"))
