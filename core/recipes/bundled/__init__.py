"""The project's own small datasets, generated offline and deterministically, with fixed splits.

``shapes`` (pictures of simple shapes), ``digits`` (scikit-learn's handwritten digits), ``motion``
(clips of a moving shape), ``sentiment`` (SST-2 reviews) and ``chat`` (greetings, capabilities,
refusals) train and evaluate the starter assistant. Each builds into ``<root>/<name>/``; the multi-task
mix lies at ``<root>/mix_{split}.jsonl`` so its media paths (``shapes/images/...``) stay inside the
data file's folder, as :mod:`mmassist.core.data` requires.

In a config, ``data.train: bundled:shapes/qa_train.jsonl`` builds what is needed (once, under
:func:`default_root`) and reads the file from there::

    from mmassist.core.recipes import bundled
    root = bundled.build_all(Path("data"))               # everything, then data/mix_train.jsonl ...
    path = bundled.resolve("bundled:digits/captions_test.jsonl")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from mmassist.core.recipes.bundled import chat, digits, motion, sentiment, shapes
from mmassist.core.recipes.bundled.common import SPLITS, Built, llava_record, plain_question, read_jsonl, replace_jsonl, write_json
from mmassist.core.cache import cache_dir
from mmassist.core.runtime.processor import caption_prompt  # the prompt the caption reader and Assistant.caption use
from mmassist.core.errors import DataFormatError, UnknownNameError

# Bump whenever any builder's output changes: it names the default cache folder, and a built folder
# of another version is rebuilt.
GENERATOR_VERSION = "6"
URI_PREFIX = "bundled:"
ENV_DATA_DIR = "MMASSIST_DATA_DIR"
MIX_SEED = 6
# Chat records are few; the training mix repeats them so that they are not drowned out.
MIX_CHAT_REPEAT = 5
# The shape captions are repeated too: with the drills they were under a tenth of the training mix, and
# the captions copied a colour or kind from a neighbouring shape (0.88 exact match against 0.97 before).
# The motion captions, which say which way the shape moves, are repeated as well (a chat run confused
# up and down).
MIX_CAPTION_REPEAT = {"shapes": 2, "motion": 2}
# Follow-ups: in the training mix, this share of the pictures and clips has its two questions asked in
# one conversation, the second in a later turn without the media placeholder, so the model learns to
# answer about media from an earlier turn. The validation and test mixes keep every single question and
# add such a conversation for every shape scene and clip (not digits: there the second answer repeats
# the first, which a model could copy).
FOLLOW_UP_SHARE = 0.3
FOLLOW_UP_HELD_OUT = ("shapes", "motion")
_MEDIA_FOLDERS = {"images": "image", "videos": "video"}

BUNDLED: dict[str, Callable[..., Built]] = {
    "shapes": shapes.build,
    "digits": digits.build,
    "motion": motion.build,
    "sentiment": sentiment.build,
    "chat": chat.build,
}


def default_root() -> Path:
    """``$MMASSIST_DATA_DIR``, else ``<user cache>/bundled/<generator version>`` (:func:`mmassist.core.cache.cache_dir`)."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    return cache_dir("bundled", GENERATOR_VERSION)


def build(name: str, root: str | Path, *, small: bool = False) -> Path:
    """Build dataset ``name`` into ``<root>/<name>/`` unless it is already there (same generator
    version, same size), and return that folder.

    Safe to call from several processes at once: one builds (under a lock file) into a temporary
    folder that is then renamed into place, and a reader never sees a half-built folder.
    ``small=True`` builds a few examples per split (40/10/10), for tests.
    """
    if name not in BUNDLED:
        raise UnknownNameError(f"unknown bundled dataset {name!r}; available: {', '.join(BUNDLED)}")
    root = Path(root)
    target = root / name
    if _is_current(target, small):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{name}.lock"):
        if _is_current(target, small):  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            built = BUNDLED[name](tmp, small=small)
            manifest = {"name": name, "generator_version": GENERATOR_VERSION, "small": small,
                        "seed": built.seed, "counts": built.counts, **built.extra}
            (tmp / "README.md").write_text(_readme(name, built, small), encoding="utf-8")
            write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete build
            os.chmod(tmp, 0o755)  # mkdtemp's folder is private
            _install(tmp, target, small)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_all(root: str | Path, *, small: bool = False) -> Path:
    """Build every dataset and the multi-task mix (``<root>/mix_{split}.jsonl``); return ``root``."""
    root = Path(root)
    for name in BUNDLED:
        build(name, root, small=small)
    if not _mix_is_current(root, small):
        with _lock(root / ".mix.lock"):
            if not _mix_is_current(root, small):
                _build_mix(root, small)
    return root


def resolve(uri: str, *, root: str | Path | None = None, small: bool = False) -> Path:
    """The absolute path a ``bundled:`` URI names, building what it needs first.

    ``bundled:<dataset>/<file>`` (or ``bundled:<dataset>``, the folder) builds that dataset;
    ``bundled:mix_<split>.jsonl`` builds them all and the mix. ``root`` defaults to
    :func:`default_root`; ``small`` builds the small versions (for tests).
    """
    if not uri.startswith(URI_PREFIX):
        raise DataFormatError(f"{uri!r} is not a bundled data URI; they look like "
                              f"{URI_PREFIX}shapes/captions_train.jsonl")
    rel = uri[len(URI_PREFIX):].strip().lstrip("/")
    parts = Path(rel).parts
    if ".." in parts:
        raise DataFormatError(f"{uri}: '..' is not allowed in a bundled data URI")
    root = Path(root) if root is not None else default_root()
    if parts and parts[0] in BUNDLED:
        build(parts[0], root, small=small)
    elif not parts or (len(parts) == 1 and parts[0].startswith("mix_")):
        build_all(root, small=small)
    else:
        raise UnknownNameError(f"{uri}: unknown bundled dataset {parts[0]!r}; available: "
                               f"{', '.join(BUNDLED)}, or the mix files mix_train.jsonl, "
                               "mix_validation.jsonl, mix_test.jsonl")
    path = (root / rel).resolve()
    if not path.exists():
        folder = root / parts[0] if parts[0] in BUNDLED else root
        there = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise DataFormatError(f"{uri}: no such file in the bundled data ({folder}); "
                              f"it holds: {', '.join(there)}")
    return path


# -- building safely -----------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _manifest_ok(path: Path, small: bool) -> bool:
    manifest = _read_manifest(path)
    return manifest.get("generator_version") == GENERATOR_VERSION and manifest.get("small") == small


def _is_current(folder: Path, small: bool) -> bool:
    return _manifest_ok(folder / "manifest.json", small)


def _install(tmp: Path, target: Path, small: bool) -> None:
    """Rename the freshly built ``tmp`` to ``target``, moving a stale ``target`` out of the way."""
    if _is_current(target, small):  # built meanwhile by someone without the lock: keep theirs
        return
    stale = None
    if target.exists():
        stale = target.with_name(f".{target.name}-stale-{os.getpid()}-{random.getrandbits(32):08x}")
        os.replace(target, stale)
    try:
        os.replace(tmp, target)
    except OSError:
        # Someone without the lock (e.g. on a file system without flock) got there first.
        if not _is_current(target, small):
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (flock); no lock where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps readers safe
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- the multi-task mix -----------------------------------------------------------------------------------


def _dataset_fingerprints(root: Path) -> dict[str, str]:
    """Each dataset's manifest hash: the mix is rebuilt when any dataset under it was."""
    out = {}
    for name in BUNDLED:
        path = root / name / "manifest.json"
        out[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return out


def _mix_is_current(root: Path, small: bool) -> bool:
    manifest = _read_manifest(root / "mix_manifest.json")
    return (_manifest_ok(root / "mix_manifest.json", small)
            and manifest.get("datasets") == _dataset_fingerprints(root)
            and all((root / f"mix_{s}.jsonl").is_file() for s in SPLITS))


def _build_mix(root: Path, small: bool) -> None:
    """``mix_{split}.jsonl``: captions (as a describe prompt), QA, sentiment and chat of every dataset,
    with media paths relative to ``root``, shuffled with a fixed seed."""

    rng = random.Random(MIX_SEED)
    counts = {}
    for split in SPLITS:
        records, per_source = [], {}
        for name in BUNDLED:
            folder = root / name
            taken = []
            captions = folder / f"captions_{split}.jsonl"
            if captions.is_file():
                for i, rec in enumerate(read_jsonl(captions)):
                    modality = _MEDIA_FOLDERS[rec["file"].split("/", 1)[0]]
                    taken.append(llava_record(f"{name}-caption-{split}-{i:05d}", caption_prompt(modality),
                                              rec["caption"], {modality: f"{name}/{rec['file']}"}))
                if split == "train":
                    taken *= MIX_CAPTION_REPEAT.get(name, 1)
                per_source[f"{name}_captions"] = len(taken)
            qa = []
            for rec in read_jsonl(folder / f"qa_{split}.jsonl"):
                for modality in ("image", "video"):
                    if modality in rec:
                        rec[modality] = f"{name}/{rec[modality]}"
                qa.append(rec)
            repeat = MIX_CHAT_REPEAT if name == "chat" and split == "train" else 1
            qa, follow_ups = _with_follow_ups(name, split, qa, rng)
            per_source[f"{name}_qa"] = len(qa) * repeat
            if follow_ups:
                per_source[f"{name}_follow_ups"] = len(follow_ups)
            taken += qa * repeat + follow_ups
            drills = folder / f"drills_{split}.jsonl"  # several questions about one picture: see shapes.py
            if drills.is_file():
                more = [{**rec, "image": f"{name}/{rec['image']}"} for rec in read_jsonl(drills)]
                per_source[f"{name}_drills"] = len(more)
                taken += more
            records += taken
        rng.shuffle(records)
        replace_jsonl(root / f"mix_{split}.jsonl", records)
        counts[split] = {"records": len(records), **per_source}
    (root / "README.md").write_text(_mix_readme(counts, small), encoding="utf-8")
    write_json(root / "mix_manifest.json", {"name": "mix", "generator_version": GENERATOR_VERSION,
                                            "small": small, "seed": MIX_SEED, "chat_repeat_train": MIX_CHAT_REPEAT,
                                            "caption_repeat_train": MIX_CAPTION_REPEAT,
                                            "counts": counts, "datasets": _dataset_fingerprints(root)})


def _with_follow_ups(name: str, split: str, qa: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
    """A media dataset's single questions and its two-question conversations (see FOLLOW_UP_SHARE):
    in training they replace the two single questions they hold; held out, they come in addition."""
    groups: dict[str, list[dict]] = {}
    for rec in qa:
        media = rec.get("image") or rec.get("video")
        if media is not None:
            groups.setdefault(media, []).append(rec)
    pairs = [group[:2] for group in groups.values() if len(group) >= 2]
    if split == "train":
        pairs = [pair for pair in pairs if rng.random() < FOLLOW_UP_SHARE]
        used = {id(rec) for pair in pairs for rec in pair}
        qa = [rec for rec in qa if id(rec) not in used]
    elif name not in FOLLOW_UP_HELD_OUT:
        return qa, []
    return qa, [_follow_up(f"{name}-followup-{split}-{i:05d}", *pair) for i, pair in enumerate(pairs)]


def _follow_up(record_id: str, first: dict, second: dict) -> dict:
    """``first``'s conversation, then ``second``'s question (its media placeholder line dropped) and answer."""
    (question, answer) = second["conversations"]
    rec = {k: v for k, v in first.items() if k not in ("id", "conversations")}
    return {"id": record_id, **rec, "conversations": [*first["conversations"],
                                                      {"from": "human", "value": plain_question(question["value"])}, answer]}


# -- READMEs ----------------------------------------------------------------------------------------------


def _counts_table(counts: dict[str, dict[str, int]]) -> str:
    columns = list(dict.fromkeys(k for c in counts.values() for k in c))
    lines = ["| split | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += [f"| {split} | " + " | ".join(f"{c.get(k, 0):,}" for k in columns) + " |" for split, c in counts.items()]
    return "\n".join(lines)


def _readme(name: str, built: Built, small: bool) -> str:
    files = "\n".join(f"- `{pattern}`: {what}" for pattern, what in built.files.items())
    size_note = " This is a **small** build (for tests), not the full data set." if small else ""
    return f"""# {name} (mmassist bundled dataset)

{built.description}{size_note}

## Files

{files}
- `manifest.json`: counts, seed and generator version

Paths inside the JSONL files are relative to this folder. Splits are fixed: train, validation, test.

## Counts

{_counts_table(built.counts)}

Seed {built.seed}, generator version {GENERATOR_VERSION}. Generated offline by `core.bundled.{name}`;
the same version always gives the same files.

## Rebuild

```python
from pathlib import Path
from mmassist.core.recipes import bundled
bundled.build({name!r}, Path("<root>"){", small=True" if small else ""})   # -> <root>/{name}/
```

or name a file in a config as `bundled:{name}/<file>`, which builds it under `$MMASSIST_DATA_DIR`
(default `~/.cache/mmassist/bundled/{GENERATOR_VERSION}`).
"""


def _mix_readme(counts: dict[str, dict[str, int]], small: bool) -> str:
    per_source = "\n\n".join(f"**{split}**: " + ", ".join(f"{k} {v:,}" for k, v in c.items())
                             for split, c in counts.items())
    return f"""# mmassist bundled data

One folder per dataset ({', '.join(f'`{n}/`' for n in BUNDLED)}), each with its own README and
manifest, and the multi-task mix that trains the starter assistant: `mix_train.jsonl`,
`mix_validation.jsonl` and `mix_test.jsonl`, LLaVA-style records (task kind `chat`) combining the
captions (as "Describe this image." / "Describe this video." -> caption), the visual questions,
the sentiment questions and the plain chat. Media paths are relative to this folder. Records are
shuffled with seed {MIX_SEED}; the chat records are repeated {MIX_CHAT_REPEAT} times in the training
mix only. Follow-ups (`*-followup-*`): two questions about one picture or clip in one conversation,
the second in a later turn; they replace the two single questions for {FOLLOW_UP_SHARE:.0%} of the
training media, and are added for every {" and ".join(FOLLOW_UP_HELD_OUT)} item of validation and test.
Drills (`shapes-drill-*`, training only): up to {shapes.DRILL_QUESTIONS} more questions about each training shape
picture, {shapes.DRILL_TURNS} to a conversation.{" This is a **small** build (for tests)." if small else ""}

{per_source}

Generator version {GENERATOR_VERSION}. Rebuild with `core.bundled.build_all(Path("<this folder>"))`.
"""
