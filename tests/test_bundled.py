"""The bundled datasets: deterministic, fixed disjoint splits, answers that match the pictures, videos
whose motion shows through the decord plugin, a mix the data readers load, and bundled: URIs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmassist import core
from mmassist.core.recipes import bundled
from mmassist.core.recipes.bundled import motion, shapes
from mmassist.core.recipes.bundled.common import SMALL_COUNTS, SPLITS, read_jsonl
from mmassist.core.runtime.config import DataConfig, TaskConfig
from mmassist.core.data import load_examples, load_splits
from mmassist.core.errors import DataFormatError, UnknownNameError

MEDIA_DATASETS = {"shapes": "images", "digits": "images", "motion": "videos"}
CHAT = TaskConfig(kind="chat")
SMALL = dict(zip(SPLITS, SMALL_COUNTS))
# The 3 x 3 grid's names, written out here rather than taken from the generator.
CELL_NAMES = [["top left", "top", "top right"], ["left", "center", "right"],
              ["bottom left", "bottom", "bottom right"]]
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return bundled.build_all(tmp_path_factory.mktemp("bundled") / "data", small=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def _media(rec: dict) -> str:
    return rec.get("file") or rec.get("image") or rec.get("video")


def _question(rec: dict) -> str:
    return rec["conversations"][0]["value"].split("\n", 1)[-1]


def _answer(rec: dict) -> str:
    return rec["conversations"][1]["value"]


# -- building ---------------------------------------------------------------------------------------


def _frames(data: bytes) -> np.ndarray:
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


def test_two_builds_give_the_same_data(root, tmp_path):
    """The same bytes, but for the odd clip: x264 (single-threaded, same input) now and then encodes one
    into other bytes, in one build of several here, which decode to the same frames or nearly (a few
    levels in a block); clips are compared by their frames."""
    again = _files(bundled.build_all(tmp_path / "again", small=True))
    first = _files(root)
    assert sorted(again) == sorted(first)
    differ = [name for name in first if first[name] != again[name]]
    assert [name for name in differ if not name.endswith(".mp4")] == []
    for name in differ:
        a, b = _frames(first[name]), _frames(again[name])
        assert a.shape == b.shape and np.abs(a - b).max() <= 12 and np.abs(a - b).mean() < 0.05, name
    assert any(name.endswith(".mp4") for name in first) and any(name.endswith(".png") for name in first)


def test_layout_manifests_and_counts(root):
    for name in bundled.BUNDLED:
        folder = root / name
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["generator_version"] == bundled.GENERATOR_VERSION and manifest["small"] is True
        assert (folder / "README.md").read_text().startswith(f"# {name}")
        for split in SPLITS:
            qa = read_jsonl(folder / f"qa_{split}.jsonl")
            assert manifest["counts"][split]["qa"] == len(qa) > 0
            if name in MEDIA_DATASETS:
                captions = read_jsonl(folder / f"captions_{split}.jsonl")
                assert len(captions) == SMALL[split] == manifest["counts"][split][MEDIA_DATASETS[name]]
                assert len(qa) == 2 * len(captions)
                assert {_media(r) for r in qa} == {r["file"] for r in captions}
            if name == "sentiment":
                rows = (folder / f"{split}.tsv").read_text().splitlines()
                assert len(rows) == len(qa) == SMALL[split]
                assert [_answer(r) for r in qa] == [("negative", "positive")[int(r[-1])] for r in rows]
    mix = json.loads((root / "mix_manifest.json").read_text())
    for split in SPLITS:
        assert mix["counts"][split]["records"] == len(read_jsonl(root / f"mix_{split}.jsonl"))


def test_splits_are_fixed_and_disjoint(root):
    for name, media_dir in MEDIA_DATASETS.items():
        per_split = {s: [r["file"] for r in read_jsonl(root / name / f"captions_{s}.jsonl")] for s in SPLITS}
        files = [f for s in SPLITS for f in per_split[s]]
        assert len(files) == len(set(files))
        assert sorted(files) == sorted(f"{media_dir}/{p.name}" for p in (root / name / media_dir).iterdir())
        scenes = read_jsonl(root / name / "scenes.jsonl")
        assert {r["file"]: r["split"] for r in scenes} == {f: s for s in SPLITS for f in per_split[s]}
    captions = [r["caption"] for s in SPLITS for r in read_jsonl(root / "shapes" / f"captions_{s}.jsonl")]
    assert len(captions) == len(set(captions))  # no scene in two splits

    def prompts(name, split):
        return {re.sub(r"[^a-z' ]", "", r["conversations"][0]["value"].lower()).removesuffix(" please")
                for r in read_jsonl(root / name / f"qa_{split}.jsonl")}

    for name in ("sentiment", "chat"):
        sets = [prompts(name, s) for s in SPLITS]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), name


def test_full_split_sizes_without_building():
    labels = bundled.digits.load_source()[1]
    full = bundled.digits.split_indices(labels, small=False)
    assert [len(full[s]) for s in SPLITS] == [1397, 200, 200]
    assert sorted(i for s in SPLITS for i in full[s]) == list(range(1797))
    for split in ("validation", "test"):
        assert np.bincount(labels[full[split]]).tolist() == [20] * 10
    assert full == bundled.digits.split_indices(labels, small=False)

    folder = bundled.sentiment.source_dir()
    rows = bundled.sentiment.split_rows(bundled.sentiment.read_tsv(folder / "train.tsv"),
                                        bundled.sentiment.read_tsv(folder / "dev.tsv"), small=False)
    assert len(rows["train"]) + len(rows["validation"]) == 6920 and len(rows["test"]) == 872
    assert 680 <= len(rows["validation"]) <= 700
    assert not {s for s, _ in rows["train"]} & {s for s, _ in rows["validation"]}

    splits = bundled.chat.split_prompts()
    for kind, prompts in bundled.chat.PROMPTS.items():
        assert sorted(p for s in SPLITS for p in splits[s][kind]) == sorted(prompts)
        assert all(splits[s][kind] for s in SPLITS)


def test_build_skips_a_current_folder_and_rebuilds_a_stale_one(root, tmp_path, monkeypatch):
    def refuse(out, *, small):
        raise AssertionError("rebuilt a current dataset")

    monkeypatch.setitem(bundled.BUNDLED, "shapes", refuse)
    assert bundled.build("shapes", root, small=True) == root / "shapes"
    monkeypatch.undo()

    folder = bundled.build("chat", tmp_path, small=True)
    before = _files(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "generator_version": "0"}))
    (folder / "stray.txt").write_text("from an old version")
    assert bundled.build("chat", tmp_path, small=True) == folder
    assert _files(folder) == before
    # A full build replaces a small one, and nothing temporary is left behind.
    bundled.build("chat", tmp_path)
    assert json.loads((folder / "manifest.json").read_text())["small"] is False
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["chat"]


def test_mix_is_rebuilt_when_a_dataset_changes(tmp_path, monkeypatch):
    for name in ("shapes", "digits", "motion"):  # keep the test fast: only cheap builders
        monkeypatch.setitem(bundled.BUNDLED, name, bundled.chat.build)
    bundled.build_all(tmp_path, small=True)
    small_mix = (tmp_path / "mix_test.jsonl").read_text()
    bundled.build("chat", tmp_path)  # a full chat under the small mix
    assert not bundled._mix_is_current(tmp_path, small=True)
    bundled.build_all(tmp_path, small=True)  # chat back to small, and the mix with it
    assert bundled._mix_is_current(tmp_path, small=True)
    assert (tmp_path / "mix_test.jsonl").read_text() == small_mix


def _build_at_once(jobs: list[tuple[str, Path]]) -> list[Path]:
    """Run ``bundled.build(name, root, small=True)`` for every job in its own thread, all at once."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run(i, name, root):
        barrier.wait()
        try:
            results[i] = bundled.build(name, root, small=True)
        except Exception as e:  # reported by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_builders_agree(tmp_path, monkeypatch):
    results = _build_at_once([("chat", tmp_path), ("chat", tmp_path), ("sentiment", tmp_path),
                              ("sentiment", tmp_path)])
    assert results == [tmp_path / "chat"] * 2 + [tmp_path / "sentiment"] * 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["chat", "sentiment"]
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]
    expected = _files(tmp_path / "chat")

    # Without the lock (a file system without flock) the atomic rename still leaves one good copy.
    monkeypatch.setattr(bundled, "_lock", lambda path: contextlib.nullcontext())
    other = tmp_path / "nolock"
    assert _build_at_once([("chat", other)] * 4) == [other / "chat"] * 4
    assert _files(other / "chat") == expected
    assert [p.name for p in other.iterdir()] == ["chat"]


# -- shapes -------------------------------------------------------------------------------------------


def _parse_caption(text: str) -> list[tuple[str, str, str, str]]:
    parts = re.split(r", | and ", text)
    out = []
    for part in parts:
        m = re.fullmatch(r"a (small|large) (\w+) (circle|square|triangle) (?:at|on|in) the (.+)", part)
        assert m, f"unexpected caption part {part!r} in {text!r}"
        out.append(m.groups())
    return out


def test_shapes_pictures_and_captions_match_their_scenes(root):
    captions = {r["file"]: r["caption"] for s in SPLITS for r in read_jsonl(root / "shapes" / f"captions_{s}.jsonl")}
    counts = set()
    for rec in read_jsonl(root / "shapes" / "scenes.jsonl"):
        items = rec["shapes"]
        pixels = np.asarray(Image.open(root / "shapes" / rec["file"]))
        assert pixels.shape == (64, 64, 3)
        expected = [(s["size"], s["colour"], s["kind"], CELL_NAMES[s["row"]][s["col"]]) for s in items]
        assert _parse_caption(captions[rec["file"]]) == expected
        assert [(s["col"], s["row"]) for s in items] == sorted((s["col"], s["row"]) for s in items)  # left to right
        boxes = set()
        for s in items:
            x, y, e = s["x"], s["y"], s["extent"]
            assert 0 <= x and x + e <= 64 and 0 <= y and y + e <= 64
            assert x // (64 / 3) == s["col"] == (x + e - 1) // (64 / 3)  # inside its cell: no overlaps
            assert y // (64 / 3) == s["row"] == (y + e - 1) // (64 / 3)
            assert tuple(pixels[y + e // 2, x + e // 2]) == shapes.COLOURS[s["colour"]]
            boxes.add((s["row"], s["col"]))
            small, large = 0.125 * 64, 0.25 * 64
            assert abs(e - (small if s["size"] == "small" else large)) <= 1
        assert len(boxes) == len(items)
        colours = {tuple(c) for c in pixels.reshape(-1, 3)}
        assert colours == {shapes.BACKGROUND} | {shapes.COLOURS[s["colour"]] for s in items}
        counts.add(len(items))
    assert counts == {1, 2, 3}


def _oracle(question: str, items: list[dict]) -> str:
    """The answer to a shapes question, worked out from the scene record alone."""
    def one(**want):
        found = [s for s in items if all(s[k] == v for k, v in want.items())]
        assert len(found) == 1, f"{question!r} is ambiguous or unanswerable for {items}"
        return found[0]

    if question == "How many shapes are there?":
        return {1: "one", 2: "two", 3: "three"}[len(items)]
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return one(kind=m[1])["colour"]
    if m := re.fullmatch(r"Is the (\w+) large or small\?", question):
        return one(kind=m[1])["size"]
    if m := re.fullmatch(r"What shape is (?:at|on|in) the (.+)\?", question):
        cells = {CELL_NAMES[s["row"]][s["col"]]: s for s in items}
        words = set(m[1].split())
        assert [c for c in cells if set(c.split()) & words] == [m[1]], f"{question!r} is ambiguous"
        return cells[m[1]]["kind"]
    if m := re.fullmatch(r"Is there a (?:(\w+) )?(circle|square|triangle)\?", question):
        return "yes" if any(s["kind"] == m[2] and m[1] in (None, s["colour"]) for s in items) else "no"
    if m := re.fullmatch(r"Where is the (?:(\w+) )?(circle|square|triangle)\?", question):
        s = one(kind=m[2], **({"colour": m[1]} if m[1] else {}))
        return CELL_NAMES[s["row"]][s["col"]]
    raise AssertionError(f"unknown question {question!r}")


def test_shapes_answers_are_correct(root):
    scenes = {rec["file"]: rec["shapes"] for rec in read_jsonl(root / "shapes" / "scenes.jsonl")}
    seen, answers = set(), set()
    for split in SPLITS:
        for rec in read_jsonl(root / "shapes" / f"qa_{split}.jsonl"):
            assert rec["conversations"][0]["value"].startswith("<image>\n")
            q, a = _question(rec), _answer(rec)
            assert a == _oracle(q, scenes[rec["image"]]), (rec["image"], q)
            seen.add(" ".join(q.split()[:2]))  # "How many", "Is there", "Where is"...
            answers.add(a)
    assert len(seen) >= 5  # several question kinds in even a small build
    assert {"yes", "no"} <= answers


DRILL_KINDS = {"How many": "count", "What colour": "colour", "Is the": "size", "What shape": "shape_at",
               "Is there": "exists", "Where is": "where"}


def test_drills_ask_where_and_is_there_again_before_the_other_kinds():
    """After one question of each kind, the drills go on with "where is ..." and "is there a ..." (those
    with a colour mostly): binding colour and kind to a place is what the starter got wrong most."""
    rng = random.Random(0)
    coloured = exists = 0
    for _ in range(300):
        scene = shapes.sample_scene(rng)
        asked = shapes.drill(scene, rng)
        kinds = [DRILL_KINDS[" ".join(q.split()[:2])] for q, _ in asked]
        first = len(set(kinds))
        assert len(set(kinds[:first])) == first  # every kind once first
        again = kinds[first:]
        assert again and again[0] in shapes.DRILL_FIRST_AGAIN, kinds  # "is there" has more than one always
        if len(shapes._where_questions(scene)) > 1:
            assert sorted(again[:2]) == ["exists", "where"], kinds
        for q, _ in asked:
            if q.startswith("Is there"):
                exists += 1
                coloured += q.split()[3] in shapes.COLOURS
    assert coloured > 0.6 * exists


def test_shape_drills_ask_every_kind_a_picture_answers(root):
    """Drills for every training picture, none held out: conversations of up to DRILL_TURNS questions,
    the picture in the first turn only; per picture up to DRILL_QUESTIONS different questions, each
    answered right, every kind the picture answers (up to the limit) asked; the mix takes them in the
    training split only, and they load as chats."""
    scenes = {rec["file"]: rec["shapes"] for rec in read_jsonl(root / "shapes" / "scenes.jsonl")}
    drills = read_jsonl(root / "shapes" / "drills_train.jsonl")
    train = [r["file"] for r in read_jsonl(root / "shapes" / "captions_train.jsonl")]
    assert list(dict.fromkeys(r["image"] for r in drills)) == train
    assert [p.name for p in (root / "shapes").glob("drills_*")] == ["drills_train.jsonl"]
    per_picture = {}
    for rec in drills:
        turns = rec["conversations"]
        questions = [t["value"] for t in turns[0::2]]
        assert questions[0].startswith("<image>\n") and not any("<image>" in q for q in questions[1:])
        assert len(questions) <= shapes.DRILL_TURNS
        questions[0] = questions[0].split("\n", 1)[1]
        for q, a in zip(questions, [t["value"] for t in turns[1::2]], strict=True):
            assert a == _oracle(q, scenes[rec["image"]]), (rec["image"], q)
        per_picture.setdefault(rec["image"], []).extend(questions)
    kinds_seen = set()
    for file, questions in per_picture.items():
        assert 2 <= len(questions) <= shapes.DRILL_QUESTIONS and len(set(questions)) == len(questions)
        scene = shapes.Scene.from_dict({"shapes": scenes[file]})
        answerable = {k for k, ask in shapes.QUESTIONS.items() if ask(scene, random.Random(0)) is not None}
        asked = {" ".join(q.split()[:2]) for q in questions}  # "How many", "Is there", "Where is"...
        assert len(asked) >= min(len(answerable), shapes.DRILL_QUESTIONS), (questions, answerable)
        kinds_seen |= asked
    assert len(kinds_seen) == 6
    mixes = {s: read_jsonl(root / f"mix_{s}.jsonl") for s in SPLITS}
    in_mix = {r["id"]: r for r in mixes["train"] if "-drill-" in r["id"]}
    assert sorted(in_mix) == [r["id"] for r in drills]
    assert all(in_mix[d["id"]] == {**d, "image": f"shapes/{d['image']}"} for d in drills)
    assert not any("-drill-" in r["id"] for s in ("validation", "test") for r in mixes[s])
    loaded = load_examples(root / "shapes" / "drills_train.jsonl", CHAT, DataConfig())
    assert len(loaded) == len(drills) and all(len(e.media) == 1 for e in loaded)


def test_shapes_questions_cover_every_kind_on_many_scenes():
    rng = random.Random(0)
    asked = set()
    for _ in range(300):
        scene = shapes.sample_scene(rng)
        items = [dataclasses.asdict(s) for s in scene.shapes]
        for kind, ask in shapes.QUESTIONS.items():
            qa = ask(scene, rng)
            if qa is not None:
                assert qa[1] == _oracle(qa[0], items), qa
                asked.add(kind)
    assert asked == set(shapes.QUESTIONS)


# -- digits -------------------------------------------------------------------------------------------


def test_digits_are_sklearns_images_and_labels(root):
    images, labels = bundled.digits.load_source()
    questions = {}
    for split in SPLITS:
        for rec in read_jsonl(root / "digits" / f"qa_{split}.jsonl"):
            questions.setdefault(rec["image"], []).append((_question(rec), _answer(rec)))
    for rec in read_jsonl(root / "digits" / "scenes.jsonl"):
        i = rec["index"]
        assert rec["digit"] == labels[i]
        pixels = np.asarray(Image.open(root / "digits" / rec["file"]))
        assert pixels.shape == (32, 32, 3)
        ink = 255 - pixels[::4, ::4, 0].astype(int)
        assert np.abs(ink * 16 / 255 - images[i]).max() < 0.05
        assert {a for _, a in questions[rec["file"]]} == {str(labels[i])}
        assert {q for q, _ in questions[rec["file"]]} == {"Which digit is this?", "What number is written here?"}
    captions = read_jsonl(root / "digits" / "captions_test.jsonl")
    assert all(re.fullmatch(r"a handwritten digit \d", r["caption"]) for r in captions)
    assert len({r["caption"] for r in captions}) == 10  # stratified: one of each digit in the small test split


# -- motion -------------------------------------------------------------------------------------------


def _centroids(frames) -> np.ndarray:
    """(F, 3, H, W) float frames -> (F, 2) x, y centroids of the pixels that are not background."""
    background = np.array(shapes.BACKGROUND, dtype=np.float32).reshape(1, 3, 1, 1) / 255
    fg = (np.abs(frames.numpy() - background).max(axis=1) > 0.25)  # (F, H, W)
    ys, xs = np.mgrid[0:fg.shape[1], 0:fg.shape[2]]
    return np.stack([[(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()] for m in fg])


def test_motion_videos_decode_and_show_their_direction(root):
    from mmassist.core.contract.media import Media
    from mmassist.plugins.video import load_video

    spec = core.Host(load_entrypoints=False).encoders.get("video/decord")
    config = spec.config_cls(num_frames=motion.NUM_FRAMES, max_frames=motion.NUM_FRAMES, num_threads=1)
    directions = set()
    for rec in read_jsonl(root / "motion" / "scenes.jsonl"):
        clip = load_video(Media.of(root / "motion" / rec["file"]), config)
        assert clip.num_video_frames == len(clip.indices) == rec["num_frames"] == motion.NUM_FRAMES
        assert clip.video_fps == pytest.approx(motion.FPS)
        assert clip.frames.shape[1:] == (3, 64, 64)
        c = _centroids(clip.frames)
        dx, dy = motion.DIRECTIONS[rec["direction"]]
        travel = rec["step"] * (rec["num_frames"] - 1)
        moved = c[-1] - c[0]
        assert moved == pytest.approx([dx * travel, dy * travel], abs=1.5), (rec, moved)
        along = np.diff(c[:, 0] if dx else c[:, 1]) * (dx or dy)
        assert (along > 0).all(), (rec, c)  # every frame moves on, in the stated direction
        directions.add(rec["direction"])
    assert directions == set(motion.DIRECTIONS)


def test_motion_captions_and_answers_match_their_clips(root):
    clips = {r["file"]: r for r in read_jsonl(root / "motion" / "scenes.jsonl")}
    phrase = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
    for split in SPLITS:
        for rec in read_jsonl(root / "motion" / f"captions_{split}.jsonl"):
            c = clips[rec["file"]]
            assert rec["caption"] == f"a {c['colour']} {c['kind']} moving {phrase[c['direction']]}"
        by_clip = {}
        for rec in read_jsonl(root / "motion" / f"qa_{split}.jsonl"):
            assert rec["conversations"][0]["value"].startswith("<video>\n")
            by_clip.setdefault(rec["video"], []).append((_question(rec), _answer(rec)))
        for file, qas in by_clip.items():
            c = clips[file]
            (q1, a1), (q2, a2) = qas
            assert re.search(r"move|moving", q1) and a1 == c["direction"]
            assert c["kind"] in q1 or "shape" in q1
            assert a2 == {"What colour is the moving shape?": c["colour"], "What shape is moving?": c["kind"]}[q2]


def test_motion_start_positions_do_not_give_the_direction_away():
    # Played backwards, a clip is one the generator could have drawn in the opposite direction: the
    # last positions of one direction's range are exactly the first positions of the other's.
    for extent in range(motion.EXTENTS[0], motion.EXTENTS[1] + 1):
        for step in range(motion.STEPS[0], motion.STEPS[1] + 1):
            travel = step * (motion.NUM_FRAMES - 1)
            for d, (dx, dy) in motion.DIRECTIONS.items():
                ranges = motion.start_range(d, extent, step)
                opposite = motion.start_range(OPPOSITE[d], extent, step)
                ends = [(lo + s * travel, hi + s * travel) for (lo, hi), s in zip(ranges, (dx, dy))]
                assert ends == list(opposite)
                assert all(lo <= hi for lo, hi in ranges)


# -- the mix and the readers -----------------------------------------------------------------------------


def test_mix_files_load_as_chat(root):
    manifest = json.loads((root / "mix_manifest.json").read_text())
    for split in SPLITS:
        examples = load_examples(root / f"mix_{split}.jsonl", CHAT, DataConfig())
        assert len(examples) == manifest["counts"][split]["records"]
        modalities = {m for e in examples for m, _ in e.media}
        assert modalities == {"image", "video"}
        assert all(p.is_relative_to(root.resolve()) for e in examples for _, p in e.media)
        prompts = {e.messages[0]["content"] for e in examples}
        assert {"<image>\nDescribe this image.", "<video>\nDescribe this video."} <= prompts
        assert any(p.startswith("Review: ") for p in prompts)
        assert any(e.messages[1]["content"].startswith("Hello!") for e in examples)


def test_the_training_mix_repeats_the_shape_captions(root):
    """Training repeats each shape caption MIX_CAPTION_REPEAT times (the held-out mixes and the other
    datasets' captions keep one of each), so captions keep their share beside the drills."""
    import collections

    assert bundled.MIX_CAPTION_REPEAT["shapes"] > 1
    for split in SPLITS:
        mix = read_jsonl(root / f"mix_{split}.jsonl")
        for name in ("shapes", "digits", "motion"):
            seen = collections.Counter(r["id"] for r in mix if r["id"].startswith(f"{name}-caption-"))
            repeat = bundled.MIX_CAPTION_REPEAT.get(name, 1) if split == "train" else 1
            assert len(seen) == len(read_jsonl(root / name / f"captions_{split}.jsonl")) > 0
            assert set(seen.values()) == {repeat}, (split, name)


def test_follow_ups_ask_about_the_same_media_a_turn_later(root):
    """Training: a share of the media has its two questions in one conversation instead of two records;
    held out: every shape scene and clip gets one in addition, digits none. Each loads as a two-turn chat
    whose second question has no placeholder, and the reader finds the media of the first turn."""
    singles = {s: [{**r, "media": f"{name}/{_media(r)}"} for name in MEDIA_DATASETS
                   for r in read_jsonl(root / name / f"qa_{s}.jsonl")] for s in SPLITS}
    for split in SPLITS:
        mix = read_jsonl(root / f"mix_{split}.jsonl")
        follow_ups = [r for r in mix if "-followup-" in r["id"]]
        kept = {r["id"] for r in mix if r["id"] in {q["id"] for q in singles[split]}}
        by_media = {}
        for rec in singles[split]:
            by_media.setdefault(rec["media"], []).append(rec)
        for rec in follow_ups:
            first, second = by_media[_media(rec)][:2]
            turns = rec["conversations"]
            assert turns[:2] == first["conversations"] and turns[3] == second["conversations"][1]
            assert turns[2]["value"] == second["conversations"][0]["value"].split("\n", 1)[1]
            assert (first["id"] in kept) == (second["id"] in kept) == (split != "train")
        sources = {r["id"].split("-", 1)[0] for r in follow_ups}
        if split == "train":
            assert sources == set(MEDIA_DATASETS)
            assert len(kept) == len(singles["train"]) - 2 * len(follow_ups)
        else:
            assert sources == set(bundled.FOLLOW_UP_HELD_OUT)
            assert len(follow_ups) == sum(SMALL[split] for _ in bundled.FOLLOW_UP_HELD_OUT)
            assert len(kept) == len(singles[split])
        examples = load_examples(root / f"mix_{split}.jsonl", CHAT, DataConfig())
        loaded = [e for e, r in zip(examples, mix, strict=True) if "-followup-" in r["id"]]
        assert len(loaded) == len(follow_ups)
        assert all([m["role"] for m in e.messages] == ["user", "assistant"] * 2 and len(e.media) == 1
                   for e in loaded)


def test_dataset_files_load_through_the_readers(root):
    caption = TaskConfig(kind="caption")
    for name in MEDIA_DATASETS:
        examples = load_examples(root / name / "captions_train.jsonl", caption, DataConfig())
        assert len(examples) == SMALL["train"]
        assert len(load_examples(root / name / "qa_test.jsonl", TaskConfig(kind="vqa"), DataConfig())) == 20
    sentiment = TaskConfig(kind="classification", labels=["negative", "positive"])
    examples = load_examples(root / "sentiment" / "test.tsv", sentiment, DataConfig())
    assert len(examples) == SMALL["test"] and {e.label for e in examples} <= {"negative", "positive"}


def test_bundled_uris_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.ENV_DATA_DIR, str(tmp_path / "cache"))
    assert bundled.default_root() == tmp_path / "cache"
    path = bundled.resolve("bundled:chat/qa_train.jsonl")
    assert path == (tmp_path / "cache" / "chat" / "qa_train.jsonl").resolve() and path.is_file()

    data = DataConfig(train="bundled:chat/qa_train.jsonl", validation="bundled:chat/qa_validation.jsonl",
                      test="bundled:chat/qa_test.jsonl")
    splits = load_splits(data, CHAT)
    assert [len(splits[s]) for s in SPLITS] == [len(read_jsonl(tmp_path / "cache" / "chat" / f"qa_{s}.jsonl"))
                                                for s in SPLITS]

    cfg = core.FusionConfig.from_dict({
        "encoders": {}, "decoder": {"init": {"model_type": "llama"}, "tokenizer": "bytes"},
        "data": {"train": "bundled:mix_train.jsonl", "test": "relative/test.jsonl"}})
    cfg.save(tmp_path / "cfg.yaml")
    loaded = core.FusionConfig.from_file(tmp_path / "cfg.yaml")
    assert loaded.data.train == "bundled:mix_train.jsonl"
    assert loaded.data.test == str((tmp_path / "relative/test.jsonl").resolve())

    small_root = tmp_path / "small"
    assert bundled.resolve("bundled:shapes", root=small_root, small=True) == (small_root / "shapes").resolve()
    with pytest.raises(UnknownNameError, match="available: shapes, digits, motion, sentiment, chat"):
        bundled.resolve("bundled:cats/train.jsonl")
    with pytest.raises(DataFormatError, match="qa_train.jsonl"):
        bundled.resolve("bundled:chat/train.jsonl")
    with pytest.raises(DataFormatError, match=r"'\.\.'"):
        bundled.resolve("bundled:chat/../../etc/passwd")
    with pytest.raises(UnknownNameError):
        bundled.build("cats", tmp_path)
