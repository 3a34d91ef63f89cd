"""The pretrained-LM starter's recipe (core/recipes/smol): its data, replay and stage plumbing, on the small
bundled build. (The whole recipe, two stages of two steps, is run by hand: it loads a 135M model five times.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mmassist import core
from mmassist.core.data import load_examples
from mmassist.core.recipes import bundled, smol
from mmassist.core.recipes.smol.prompts import IDENTITY, KNOWLEDGE, knowledge_correct, replay_prompts
from mmassist.core.recipes.smol.replay import replay_records, trimmed
from mmassist.core.runtime.config import DataConfig, TaskConfig


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return bundled.build_all(tmp_path_factory.mktemp("bundled") / "data", small=True)


def test_the_replay_prompts_are_many_fixed_and_hold_out_the_knowledge_questions():
    prompts = smol.general_prompts()
    assert len(prompts) >= 2000 and len(set(prompts)) == len(prompts)
    assert prompts == smol.general_prompts() and replay_prompts(5) == replay_prompts()[:5]
    held_out = {q.lower() for q, _ in KNOWLEDGE} | {q.lower() for q in IDENTITY}
    assert not held_out & {p.lower() for p in prompts}
    assert len(KNOWLEDGE) >= 100


def test_answers_are_trimmed_to_whole_sentences_or_dropped():
    assert trimmed({"answer": "Paris.", "finished": True}) == "Paris."
    cut = {"answer": "One. Two three four five six seven. And then it went on and", "finished": False}
    assert trimmed(cut) == "One. Two three four five six seven."
    assert trimmed({"answer": "Short. " + "and then a ramble that goes on " * 4, "finished": False}) is None
    assert trimmed({"answer": "", "finished": True}) is None
    records = replay_records([{"prompt": "hi", "answer": "Hello!", "finished": True},
                              {"prompt": "x", "answer": "", "finished": True}])
    assert [r["conversations"] for r in records] == [[{"from": "human", "value": "hi"},
                                                      {"from": "gpt", "value": "Hello!"}]]


def test_knowledge_answers_are_matched_as_words():
    assert knowledge_correct("The capital of France is Paris.", ("Paris",))
    assert knowledge_correct("Water is H2O.", ("H2O",))
    assert knowledge_correct("It is 4.", ("4", "four"))
    assert not knowledge_correct("It is 42.", ("4", "four"))
    assert not knowledge_correct("Gold is a metal.", ("Au",))


def test_the_stage_data_files_leave_out_the_canned_chat_and_load(small_data, tmp_path):
    files = smol.build_mixes(small_data)
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"id": "replay-0", "conversations": [
        {"from": "human", "value": "Tell me a joke."}, {"from": "gpt", "value": "Why did the chicken..."}]}) + "\n")
    tune = smol.build_tune_mix(small_data, replay)
    assert tune.parent == small_data and all(f.parent == small_data for f in files.values())
    records = {name: [json.loads(line) for line in path.read_text().splitlines()]
               for name, path in {**files, "tune_train": tune}.items()}
    assert all(not r["id"].startswith("chat-") for rs in records.values() for r in rs)
    assert all("image" in r or "video" in r for r in records["align_train"])
    ids = [r["id"] for r in records["tune_train"]]
    assert ids.count("replay-0") == smol.REPLAY_REPEATS
    assert sum(i.startswith("identity-") for i in ids) == len(IDENTITY) * smol.IDENTITY_REPEATS
    assert sum(i.startswith("photo-train-") for i in ids) == smol.PHOTOS
    assert len(records["validation"]) <= smol.VALIDATION_SIZE
    for path in (*files.values(), tune):  # their media paths resolve inside the data folder
        assert load_examples(path, TaskConfig(kind="chat"), DataConfig())


def test_photos_are_answered_as_unseen_and_the_test_split_holds_its_photos_out(small_data):
    from PIL import Image

    from mmassist.core.recipes.smol import photos

    assert not set(photos.SOURCES["train"]) & set(photos.SOURCES["test"])
    count = 2 * len(photos.SOURCES["test"])  # every source twice
    path = photos.build(small_data, "test", count)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"photo-test-{i:05d}" for i in range(count)]
    questions = photos.picture_questions(small_data)
    assert "Describe this photo." in questions and len(questions) > len(photos.GENERIC)
    for r in records:
        assert r["conversations"][1]["value"] == photos.UNSURE
        assert photos.plain_question(r["conversations"][0]["value"]) in questions
        with Image.open(small_data / r["image"]) as im:
            assert im.size == (photos.SIZE, photos.SIZE) and im.mode == "RGB"
    before = (small_data / records[0]["image"]).read_bytes()
    assert photos.build(small_data, "test", count) == path and (small_data / records[0]["image"]).read_bytes() == before
    pixels = {(small_data / r["image"]).read_bytes() for r in records}
    assert len(pixels) == count  # crops, not copies
    assert load_examples(path, TaskConfig(kind="chat"), DataConfig())


def test_the_converse_mix_chains_records_into_conversations_that_load(small_data, tmp_path):
    smol.build_mixes(small_data)
    replay = tmp_path / "replay.jsonl"
    replay.write_text(json.dumps({"id": "replay-0", "conversations": [
        {"from": "human", "value": "Good afternoon!"}, {"from": "gpt", "value": "Good afternoon! How can I help?"}]})
        + "\n")
    smol.build_tune_mix(small_data, replay)
    path = smol.build_converse_mix(small_data, replay, conversations=60)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    mixed = [r for r in records if r["id"].startswith("converse-")]
    assert len(mixed) == 60 and len(records) == 120  # as many single-turn records beside them
    assert path.read_text() == smol.build_converse_mix(small_data, replay, conversations=60).read_text()  # fixed
    for r in mixed:
        turns = r["conversations"]
        assert len(turns) >= 4 and [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        for m in ("image", "video"):  # one file per placeholder, in order
            assert len(r.get(m, [])) == sum(t["value"].count(f"<{m}>") for t in turns)
        assert sum(len(t["value"]) for t in turns) <= smol.MAX_CHARS or len(turns) == 2
    assert any(len(r.get("image", [])) >= 2 for r in mixed)  # several pictures in one conversation
    assert any("Good afternoon!" in [t["value"] for t in r["conversations"]] for r in mixed)  # small talk
    examples = load_examples(path, TaskConfig(kind="chat"), DataConfig())
    assert len(examples) == len(records)


def test_the_backbones_come_out_of_the_tiny_starter_unchanged(host, tmp_path):
    image, video = smol.extract_backbones(tmp_path)
    cfg = smol.recipe((image, video))
    assert cfg.decoder.path == smol.DECODER
    tiny = core.Assistant.from_pretrained(smol.SHIPPED_ROOT / "model", host=host)
    spec = host.encoders.get("image/timm")
    built = spec.create(spec.make_config(cfg.encoders["image"].config))
    for name, value in tiny.model.encoders["image"].backbone.state_dict().items():
        assert torch.equal(built.backbone.state_dict()[name], value), name
    assert smol.extract_backbones(tmp_path) == (image, video)  # a second call keeps them


def test_a_stopped_stage_resumes_from_its_newest_checkpoint(tmp_path):
    assert smol.latest_checkpoint(tmp_path) is None
    for step in (50, 100):
        folder = tmp_path / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "step-000150").mkdir()  # being written: no trainer state yet
    assert smol.latest_checkpoint(tmp_path).name == "step-000100"


def test_a_stage_continues_from_a_shipped_checkpoint(host, tmp_path):
    from mmassist.ui.testing import colour_squares, tiny_caption_config

    data = colour_squares(tmp_path / "squares")
    cfg = core.FusionConfig.coerce(tiny_caption_config(data, video=False, max_steps=4, save_every=2,
                                                       keep_checkpoints=2, log_every=1))
    core.finetune(cfg, output_dir=tmp_path / "first", host=host)
    shipped = tmp_path / "first" / "checkpoints" / "step-000002"
    assert (shipped / "trainer_state.json").is_file()

    def train_lrs(run: Path) -> dict[int, float]:
        """The learning rate of each training step the run logged, by step."""
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["lr"] for r in rows if r["split"] == "train" and "loss" in r}

    def train_steps(run: Path) -> list[int]:
        return list(train_lrs(run))

    smol.run_stage(cfg, tmp_path / "resumed", progress=shipped)  # same config: resumed at step 2
    assert train_steps(tmp_path / "resumed") == [3, 4]
    smol.run_stage(cfg, tmp_path / "retested", progress=shipped, **{"data.test": None})  # evaluation-only change
    assert train_steps(tmp_path / "retested") == [3, 4]
    smol.run_stage(cfg, tmp_path / "restarted", progress=shipped, **{"training.lr": 1e-3})  # another config
    assert train_steps(tmp_path / "restarted") == [1, 2, 3, 4]
    assert json.loads((tmp_path / "restarted" / "metrics.jsonl").read_text().splitlines()[0])["event"] == "init_from"
    finished = tmp_path / "first"  # a stage finished in an earlier sitting, shipped as its model folder
    assert smol.run_stage(cfg, tmp_path / "taken", progress=finished) == tmp_path / "taken"
    assert (tmp_path / "taken" / "model.safetensors").read_bytes() == (finished / "model.safetensors").read_bytes()
    assert train_steps(tmp_path / "taken") == train_steps(finished)  # its own log, no step run again

    # A sitting ships its run: the finished align stage whole, the stopped tune stage's newest checkpoint.
    run, progress = tmp_path / "run", tmp_path / "progress"
    shutil.copytree(finished, run / "align")
    shutil.copytree(finished / "checkpoints", run / "tune" / "checkpoints")
    assert smol.ship(run, progress) == [progress / "align", progress / "tune" / "checkpoints" / "step-000004"]
    assert smol.shipped("align", progress) == progress / "align"
    assert not (progress / "align" / "checkpoints").exists()  # a finished stage ships without its checkpoints
    assert smol.shipped("tune", progress) == progress / "tune" / "checkpoints" / "step-000004"
    assert smol.shipped("converse", progress) is None
    assert smol.ship(run, progress) == []  # nothing new
    shutil.rmtree(run / "tune" / "checkpoints" / "step-000004")  # e.g. a newer sitting's own run, older
    assert smol.ship(run, progress) == [progress / "tune" / "checkpoints" / "step-000002"]
    assert [p.name for p in (progress / "tune" / "checkpoints").iterdir()] == ["step-000002"]  # one kept
    state = safe_open(str(progress / "tune" / "checkpoints" / "step-000002" / "trainer_state.safetensors"), "pt")
    assert state.keys() and not [k for k in state.keys() if k.startswith("optim/")]  # moments not shipped
    with pytest.warns(UserWarning, match="moments"):
        smol.run_stage(cfg, tmp_path / "next", progress=smol.shipped("tune", progress))
    assert train_steps(tmp_path / "next") == [3, 4]
    assert train_lrs(tmp_path / "next") == pytest.approx({s: train_lrs(tmp_path / "first")[s] for s in (3, 4)})


def test_answers_that_repeat_themselves_are_found():
    from mmassist.core.recipes.smol.evaluate import loops

    assert not loops("Paris is the capital of France. It is known for the Eiffel Tower.")
    assert loops("I like it a lot. I like it a lot. I like it a lot. I like it a lot.")
    assert loops("The sky is blue because of scattering. Also, the sky is blue because of scattering.")
    assert loops("and then and then and then and then and then")
    assert not loops("no no no")  # short repeats are words, not loops


def test_mixed_conversations_are_scored_against_the_same_questions_asked_alone(small_data, host):
    from mmassist.core.recipes.smol.evaluate import TURNS, multi_turn, pick_turns

    convs = pick_turns(small_data, 3)
    assert [t.task for t in convs[0]] == list(TURNS)
    asked = [t.source for c in convs for t in c if t.reference is not None]
    assert len(asked) == len(set(asked)) == 3 * sum(t != "small_talk" for t in TURNS)  # each record once
    assert all(p.is_file() for c in convs for t in c for paths in t.media.values() for p in paths)
    tiny = core.Assistant.from_pretrained(smol.SHIPPED_ROOT / "model", host=host)
    seen = []
    report = multi_turn(tiny, small_data, conversations=2, progress=lambda done, total: seen.append((done, total)))
    assert report.conversations == 2 and report.turns == 2 * len(TURNS) and report.too_long == 0
    assert report.scored == 2 * sum(t != "small_talk" for t in TURNS)
    assert 0 <= report.in_conversation <= 1 and 0 <= report.alone <= 1
    assert sum(r["n"] for r in report.per_task.values()) == report.scored
    assert report.examples[0][1]["task"] == "sentiment" and report.examples[0][1]["answer"] is not None
    assert seen[-1][0] == seen[-1][1]


def test_the_assistant_report_scores_every_target_and_compares_knowledge(small_data, host, tmp_path):
    """`mmassist eval starter --full` on the tiny starter, small data, a few records a task: every figure
    issue 23 asks for is there, beside its target, and knowledge is compared with a second model."""
    from mmassist.core.recipes.smol.evaluate import assistant_report, format_assistant_report

    tiny = core.Assistant.from_pretrained(smol.SHIPPED_ROOT / "model", host=host)
    rep = assistant_report(tiny, pretrained=tiny, per_task=3, conversations=2, data_root=small_data,
                           small=True)
    assert {"shapes_qa", "digits", "sentiment"} <= set(rep["tasks"])
    assert all(s["total"] <= 3 for s in rep["tasks"].values())
    assert rep["tasks"]["digits"]["target"] == 0.95
    assert rep["tasks"]["photo"]["total"] == 3 and rep["tasks"]["photo"]["target"] == 0.90
    assert rep["knowledge"]["questions"] == len(KNOWLEDGE) and rep["knowledge"]["kept"] in (1.0, None)
    assert rep["multi_turn"]["conversations"] == 2 and 0 <= rep["loops"]["share"] <= 1
    text = format_assistant_report(rep)
    assert "| digits |" in text and ">= 0.95" in text and "Ten-turn conversations: 2" in text
    assert "Generation defaults: max_new_tokens=" in text
