"""core.finetune on tiny models and small data: learning, freezing, LoRA, stopping, resuming, DDP."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmassist import core
from mmassist.core.training.callbacks import TrainerCallback

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30), "yellow": (230, 220, 20)}
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory):
    """12 plain colour squares with captions."""
    folder = tmp_path_factory.mktemp("captions")
    rows = []
    for i in range(12):
        colour = list(COLOURS)[i % 4]
        Image.new("RGB", (32, 32), COLOURS[colour]).save(folder / f"img{i}.png")
        rows.append(json.dumps({"file": f"img{i}.png", "caption": f"a {colour} square"}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def classify_file(tmp_path_factory):
    """A CSV of image paths labelled warm (red, yellow) or cool (blue, green)."""
    folder = tmp_path_factory.mktemp("classify")
    lines = ["image,label"]
    for i in range(16):
        colour = list(COLOURS)[i % 4]
        Image.new("RGB", (32, 32), COLOURS[colour]).save(folder / f"c{i}.png")
        lines.append(f"c{i}.png,{'warm' if colour in ('red', 'yellow') else 'cool'}")
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return folder / "data.csv"


def caption_cfg(caption_dir, **training) -> dict:
    return {
        "encoders": {"image": {"name": "image/timm", "freeze": True,
                               "config": {"model_name": "test_vit", "image_size": 32}}},
        "decoder": {"init": TINY_LLAMA, "tokenizer": "bytes", "max_length": 128},
        "task": {"kind": "caption", "prompt": "Describe."},
        "data": {"train": str(caption_dir), "validation_fraction": 0.0},
        "generation": {"max_new_tokens": 20},
        "training": {"epochs": 30, "batch_size": 4, "lr": 5e-3, "log_every": 5, **training},
    }


def classify_cfg(data_file, **training) -> dict:
    return {
        "encoders": {"image": {"name": "image/timm", "config": {"model_name": "test_vit", "image_size": 32}}},
        "decoder": {"init": {**TINY_LLAMA, "num_hidden_layers": 1}, "tokenizer": "bytes", "max_length": 64},
        "task": {"kind": "classification", "labels": ["cool", "warm"], "prompt": "Warm or cool?"},
        "data": {"train": str(data_file), "test": str(data_file), "validation_fraction": 0.25,
                 "text_column": "image"},
        "training": {"epochs": 4, "batch_size": 4, "lr": 2e-3, "log_every": 1, "dropout": 0.1, **training},
    }


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_and_reload(cfg: dict, host, out: Path):
    """The weights a seeded model starts from, the reloaded result of fine-tuning it, and that result."""
    torch.manual_seed(0)
    start = core.Assistant.from_config(cfg, host=host)
    res = core.finetune(cfg, output_dir=out, host=host)
    end = core.Assistant.from_pretrained(res.output_dir, host=host)
    return weights(start.model), weights(end.model), end


def test_a_tiny_captioning_run_overfits_to_exact_match(caption_dir, host, tmp_path):
    cfg = caption_cfg(caption_dir)
    cfg["data"]["test"] = str(caption_dir)
    res = core.finetune(cfg, output_dir=tmp_path / "run", host=host)
    losses = [h["loss"] for h in res.history if h["split"] == "train" and "loss" in h]
    assert losses[-1] < losses[0] / 5
    assert res.metrics["test"]["exact_match"] == 1.0
    assert res.metrics["test"]["cider_d"] > 0 and res.metrics["test"]["bleu"] > 0.9
    asst = core.Assistant.from_pretrained(res.output_dir, host=host)
    assert asst.caption(caption_dir / "img1.png") == "a blue square"
    log = [json.loads(line) for line in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["split"] == "test" and {"exact_match", "bleu", "cider_d"} <= set(log[-1])


def test_a_classifier_learns_a_separable_task_and_reports_per_class(classify_file, host, tmp_path):
    res = core.finetune(classify_cfg(classify_file), output_dir=tmp_path / "run", host=host)
    test = res.metrics["test"]
    assert test["accuracy"] == 1.0
    assert set(test["per_class"]) == {"cool", "warm"}
    assert all(v["f1"] == 1.0 and v["support"] == 8 for v in test["per_class"].values())
    asst = core.Assistant.from_pretrained(res.output_dir, host=host)
    assert asst.classify(Image.new("RGB", (32, 32), COLOURS["yellow"])) == "warm"
    assert (res.output_dir / "best" / "model.safetensors").is_file()


def test_the_last_evaluation_is_not_repeated_for_the_final_report(classify_file, host, tmp_path):
    # epochs 4 x 3 steps: the last step is an evaluation step, and the best model is the last one or an
    # earlier one; either way each step is evaluated once on validation.
    res = core.finetune(classify_cfg(classify_file, eval_every=3), output_dir=tmp_path / "run", host=host)
    log = [json.loads(line) for line in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in log if row["split"] == "validation"]
    assert steps == sorted(set(steps)) and steps[-1] == res.metrics["steps"], steps
    best = next(row for row in log if row["split"] == "validation" and row["step"] == res.metrics["best_step"])
    assert res.metrics["validation"]["accuracy"] == best["accuracy"]


def test_freezing_leaves_frozen_weights_bit_identical(classify_file, host, tmp_path):
    cfg = classify_cfg(classify_file, epochs=1, freeze=["fusion.projectors.image"])
    cfg["encoders"]["image"]["freeze"] = True
    before, after, _ = train_and_reload(cfg, host, tmp_path / "run")
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith(("encoders.image.", "fusion.projectors.image.")):
            assert same, f"{name} changed although frozen"
    assert not all(torch.equal(before[n], after[n]) for n in before if n.startswith("decoder."))


@pytest.fixture(scope="module")
def tiny_text_encoder(tmp_path_factory):
    """A two-layer BERT saved as a local Hugging Face folder: a "pretrained" text encoder to reference."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmassist.plugins.text import default_model_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def text_chat_cfg(tmp_path: Path, text: dict) -> dict:
    """A chat run whose user turns are read by the text encoder ``text``: say a review's sentiment."""
    reviews = [("a witty, moving film", "positive"), ("dull and far too long", "negative"),
               ("a gorgeous delight", "positive"), ("the plot is thin and the acting worse", "negative")] * 2
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "conversations": [
        {"from": "human", "value": f"Review: {r}"}, {"from": "gpt", "value": a}]}) + "\n"
        for i, (r, a) in enumerate(reviews)))
    return {"encoders": {"text": text}, "decoder": {"init": TINY_LLAMA, "tokenizer": "bytes", "max_length": 96},
            "task": {"kind": "chat", "encode_user_text": True},
            "data": {"train": str(data), "validation_fraction": 0.0},
            "training": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1}}


def test_a_frozen_encoder_can_train_its_top_layer_only(tiny_text_encoder, host, tmp_path):
    """Frozen-part tuning: with freeze and trainable, only the named layer of the pretrained text encoder
    learns (so its features are not cached); the checkpoint holds that layer and references the rest."""
    from safetensors.torch import load_file

    text = {"name": "text/hf", "freeze": True, "trainable": ["model.encoder.layer.1"],
            "config": {"model_path": str(tiny_text_encoder)}}
    before, after, _ = train_and_reload(text_chat_cfg(tmp_path, text), host, tmp_path / "run")
    top = "encoders.text.model.encoder.layer.1."
    text_names = [n for n in before if n.startswith("encoders.text.")]
    assert all(not torch.equal(before[n], after[n]) for n in text_names if n.startswith(top) and "weight" in n)
    assert all(torch.equal(before[n], after[n]) for n in text_names if not n.startswith(top))
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert sorted(n for n in saved if n.startswith("encoders.text.")) == sorted(
        n for n in text_names if n.startswith(top))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["referenced"]["encoders.text."] == str(tiny_text_encoder)
    # Starting a new run from it: the tuned layer must stay trainable, or the new checkpoints would lose it.
    frozen = text_chat_cfg(tmp_path, {**text, "trainable": []})
    with pytest.raises(core.ConfigError, match="encoders.text.model.encoder.layer.1.*freezes and references"):
        core.finetune(frozen, output_dir=tmp_path / "again", host=host, init_from=tmp_path / "run")
    again = core.finetune(text_chat_cfg(tmp_path, text), output_dir=tmp_path / "again", host=host,
                          init_from=tmp_path / "run", **{"training.epochs": 1})
    assert again.output_dir.is_dir()


def test_trainable_parts_must_be_named_right(tiny_text_encoder, host, tmp_path):
    text = {"name": "text/hf", "trainable": ["model.encoder.layer.1"], "config": {"model_path": str(tiny_text_encoder)}}
    with pytest.raises(core.ConfigError, match="set freeze: true"):
        core.finetune(text_chat_cfg(tmp_path, text), output_dir=tmp_path / "run", host=host)
    text = {**text, "freeze": True, "trainable": ["model.encoder.layer.7"]}
    with pytest.raises(core.ConfigError, match="'model.encoder.layer.7' names no parameter of text/hf"):
        core.finetune(text_chat_cfg(tmp_path, text), output_dir=tmp_path / "run", host=host)


def test_lora_trains_only_adapters_and_the_merged_export_matches(caption_dir, host, tmp_path):
    cfg = caption_cfg(caption_dir, epochs=2, lora={"enabled": True, "r": 4})
    before, after, asst = train_and_reload(cfg, host, tmp_path / "run")
    changed = {n for n in before if n.startswith("decoder.") and not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n for n in changed)
    merged = asst.merged()
    assert not any("lora_" in n for n in merged.model.state_dict())
    out = merged.save_pretrained(tmp_path / "merged")
    plain = core.Assistant.from_pretrained(out, host=host)
    conv = asst.processor.conversation("Describe.", {"image": [caption_dir / "img0.png"]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)])
    with torch.no_grad():
        torch.testing.assert_close(plain.model(batch).logits, asst.model(batch).logits, atol=1e-4, rtol=1e-4)


def test_early_stopping_stops(classify_file, host, tmp_path):
    cfg = classify_cfg(classify_file, epochs=50, lr=1e-9, eval_every=1, patience=2, metric="loss")
    res = core.finetune(cfg, output_dir=tmp_path / "run", host=host)
    assert res.metrics["steps"] < 10
    assert any(h.get("event") == "early_stop" for h in res.history)


class Recorder(TrainerCallback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, state, control):
        self.events.append("begin")

    def on_step_end(self, state, control):
        self.events.append(f"step{state.step}")
        if state.step == self.stop_at:
            control.should_stop = True

    def on_evaluate(self, state, control, metrics):
        self.events.append("evaluate")

    def on_save(self, state, control, path):
        self.events.append("save")

    def on_train_end(self, state, control):
        self.events.append("end")


def test_callbacks_see_progress_and_can_stop_the_run(classify_file, host, tmp_path):
    rec = Recorder(stop_at=3)
    res = core.finetune(classify_cfg(classify_file, eval_every=2), output_dir=tmp_path / "run", host=host,
                        callbacks=[rec])
    assert rec.events[0] == "begin" and rec.events[-1] == "end"
    assert "step3" in rec.events and "step4" not in rec.events and "evaluate" in rec.events
    assert res.metrics["steps"] == 3 and (res.output_dir / "model.safetensors").is_file()


def test_resume_continues_exactly_where_the_run_stopped(classify_file, host, tmp_path):
    cfg = classify_cfg(classify_file, epochs=3, save_every=2, eval_every=2)
    torch.manual_seed(0)
    full = core.finetune(cfg, output_dir=tmp_path / "full", host=host)
    core.finetune(cfg, output_dir=tmp_path / "cut", host=host, callbacks=[Recorder(stop_at=4)])
    ckpt = tmp_path / "cut" / "checkpoints" / "step-000004"
    resumed = core.finetune(cfg, output_dir=tmp_path / "cut", host=host, resume_from=ckpt)
    a = core.Assistant.from_pretrained(full.output_dir, host=host)
    b = core.Assistant.from_pretrained(resumed.output_dir, host=host)
    for (name, x), y in zip(weights(a.model).items(), weights(b.model).values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.metrics["steps"] == full.metrics["steps"]


def test_a_resumed_run_may_change_its_test_file_and_generation_but_nothing_it_trains_on(classify_file, host,
                                                                                       tmp_path):
    cfg = classify_cfg(classify_file, epochs=1, save_every=2, eval_every=2)
    core.finetune(cfg, output_dir=tmp_path / "cut", host=host, callbacks=[Recorder(stop_at=2)])
    ckpt = tmp_path / "cut" / "checkpoints" / "step-000002"
    with pytest.raises(core.ConfigError, match=r"\(training.lr, training.weight_decay changed\).*init_from"):
        core.finetune(cfg, output_dir=tmp_path / "cut", host=host, resume_from=ckpt,
                      **{"training.lr": 0.5, "training.weight_decay": 0.3})
    res = core.finetune(cfg, output_dir=tmp_path / "cut", host=host, resume_from=ckpt,
                        **{"data.test": None, "generation.max_new_tokens": 7})
    assert res.metrics["steps"] > 2 and "test" not in res.metrics


def test_finetune_from_python_shows_its_progress_unless_told_not_to(classify_file, host, tmp_path, capsys):
    from mmassist.ui.finetune_job import FinetuneJob, ProgressRecorder

    cfg = core.FusionConfig.coerce(classify_cfg(classify_file, epochs=2, eval_every=3))
    job = FinetuneJob(cfg, tmp_path / "shown")
    phases = []

    class Spy(TrainerCallback):
        def on_phase(self, state, control, done, total):
            phases.append((job.phase, done, total))

    core.finetune(cfg, output_dir=tmp_path / "shown", host=host, callbacks=[ProgressRecorder(job), Spy()])
    err = capsys.readouterr().err  # not a terminal: whole lines, the last step's and each evaluation's last batch
    assert "6/6 loss" in err and "step 3 epoch" in err and "validation: loss" in err, err
    assert "step 3: validating 1/1 batches" in err and "testing" in err and "saving the model" in err, err
    assert ("validating", 1, 1) in phases and ("testing", 4, 4) in phases and phases[-1] == ("saving", 0, 1)
    assert job.best_step in (3, 6) and job.metric == "accuracy"
    core.finetune(cfg, output_dir=tmp_path / "quiet", host=host, progress=False)
    assert capsys.readouterr().err == ""


def test_the_app_says_what_the_run_is_doing_and_which_weights_it_kept():
    from mmassist.ui.finetune_job import Snapshot
    from mmassist.ui.finetune_tab import render_status

    base = dict(run_name="r", step=20, max_steps=40, epoch=1.0, loss=0.5, elapsed=30.0, points=[], series=[],
                metrics=None, output_dir="/runs/r", error=None, stop_requested=False, metric="accuracy")
    assert "about 30 s left" in render_status(Snapshot(phase="training", **base))
    validating = render_status(Snapshot(phase="validating", phase_done=3, phase_total=12, **base))
    assert "validating (3 / 12 batches)" in validating and "left" not in validating
    stopping = render_status(Snapshot(phase="saving", **{**base, "stop_requested": True}))
    assert "stopping: saving the model" in stopping and "left" not in stopping
    done = render_status(Snapshot(phase="stopped", best_step=10, **{**base, "step": 31}))
    assert "weights of step 10, the best validation accuracy (training went on to step 31)" in done


def test_the_run_ends_on_its_best_weights_even_if_best_was_left_set_aside(classify_file, host, tmp_path):
    """A kill while ``best`` was being replaced leaves only ``.best.old`` (a resumed run finds it so; here
    a callback leaves it so at the last step); the end of the run puts it back and publishes the best
    step's weights, not the last step's."""
    run = tmp_path / "run"

    class SetBestAside(TrainerCallback):  # the folders as a kill between save_checkpoint's renames leaves them
        def on_step_end(self, state, control):
            if state.step == 12:
                (run / "best").rename(run / ".best.old")

    torch.manual_seed(0)
    res = core.finetune(classify_cfg(classify_file, eval_every=5), output_dir=run, host=host,
                        callbacks=[SetBestAside()])
    assert res.metrics["steps"] == 12 and res.metrics["best_step"] in (5, 10)
    assert (run / "best").is_dir() and not (run / ".best.old").exists()
    final = weights(core.Assistant.from_pretrained(run, host=host).model)
    best = weights(core.Assistant.from_pretrained(run / "best", host=host).model)
    assert all(torch.equal(final[n], best[n]) for n in final)
    last = weights(core.Assistant.from_pretrained(run / "checkpoints" / "step-000012", host=host).model)
    assert not all(torch.equal(final[n], last[n]) for n in final)


@pytest.fixture(scope="module")
def captioner(caption_dir, host, tmp_path_factory):
    """A tiny captioner trained to say each square's colour: the model later runs start from."""
    res = core.finetune(caption_cfg(caption_dir), output_dir=tmp_path_factory.mktemp("captioner") / "run", host=host)
    assert core.Assistant.from_pretrained(res.output_dir, host=host).caption(caption_dir / "img1.png") == \
        "a blue square"
    return res.output_dir


def test_a_run_can_start_from_a_trained_model_and_add_parts_to_it(captioner, caption_dir, host, tmp_path):
    """init_from: a new run (here with position embeddings the first model lacked) starts from a trained
    model's weights, so it still knows what that model learned; the same run from scratch does not."""
    cfg = caption_cfg(caption_dir, epochs=1, lr=1e-8, warmup_ratio=0.0)
    cfg["fusion"] = {"position_embeddings": ["image"]}
    res = core.finetune(cfg, output_dir=tmp_path / "from", host=host, init_from=captioner)
    log = [json.loads(line) for line in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "init_from" and log[0]["path"] == str(captioner)
    assert log[0]["new_tensors"] == ["fusion.position.image.embedding.weight"]
    started = core.Assistant.from_pretrained(res.output_dir, host=host)
    assert [started.caption(caption_dir / f"img{i}.png") for i in range(4)] == \
        ["a red square", "a blue square", "a green square", "a yellow square"]
    source = weights(core.Assistant.from_pretrained(captioner, host=host).model)
    now = weights(started.model)
    for name, value in source.items():
        torch.testing.assert_close(now[name], value, atol=1e-6, rtol=0, msg=name)
    fresh = core.finetune(cfg, output_dir=tmp_path / "fresh", host=host)
    assert core.Assistant.from_pretrained(fresh.output_dir, host=host).caption(caption_dir / "img1.png") != \
        "a blue square"


def test_a_lora_run_can_start_from_a_trained_model(captioner, caption_dir, host, tmp_path):
    """Under LoRA the trained weights go into the layers the adapters wrap; merged, it is that model again."""
    cfg = caption_cfg(caption_dir, epochs=1, lr=1e-8, warmup_ratio=0.0, lora={"enabled": True, "r": 4})
    res = core.finetune(cfg, output_dir=tmp_path / "lora", host=host, init_from=captioner)
    log = json.loads((res.output_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert log["new_tensors"] and all("lora_" in n for n in log["new_tensors"])
    merged = core.Assistant.from_pretrained(res.output_dir, host=host).merged()
    assert merged.caption(caption_dir / "img3.png") == "a yellow square"
    source = weights(core.Assistant.from_pretrained(captioner, host=host).model)
    now = weights(merged.model)
    for name, value in source.items():
        torch.testing.assert_close(now[name], value, atol=1e-5, rtol=0, msg=name)


def test_a_lora_run_goes_on_from_another_lora_run(captioner, caption_dir, host, tmp_path):
    """A further LoRA stage starts from the first one's adapters (not fresh ones): at a learning rate of ~0 it is
    the first stage's model; a run without LoRA is told to merge them first."""
    lora = {"enabled": True, "r": 4}
    first = core.finetune(caption_cfg(caption_dir, epochs=2, lora=lora), output_dir=tmp_path / "one", host=host,
                          init_from=captioner).output_dir
    cfg = caption_cfg(caption_dir, epochs=1, lr=1e-8, warmup_ratio=0.0, lora=lora)
    second = core.finetune(cfg, output_dir=tmp_path / "two", host=host, init_from=first).output_dir
    log = json.loads((second / "metrics.jsonl").read_text().splitlines()[0])
    assert log["event"] == "init_from" and log["new_tensors"] == []
    before = weights(core.Assistant.from_pretrained(first, host=host).model)
    after = weights(core.Assistant.from_pretrained(second, host=host).model)
    adapters = [n for n in before if "lora_B" in n]
    assert adapters and any(before[n].abs().sum() > 0 for n in adapters)  # the first stage trained them
    for name in adapters:
        torch.testing.assert_close(after[name], before[name], atol=1e-5, rtol=0, msg=name)
    with pytest.raises(core.ConfigError, match="merge its LoRA adapters first"):
        core.finetune(caption_cfg(caption_dir, epochs=1), output_dir=tmp_path / "three", host=host, init_from=first)


def test_init_from_a_model_that_does_not_fit_says_why(captioner, caption_dir, host, tmp_path):
    wider = caption_cfg(caption_dir, epochs=1)
    wider["decoder"]["init"] = {**TINY_LLAMA, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1}
    with pytest.raises(core.ConfigError, match=r"init_from: .* has shape \(.*64.*\), this config's model has"):
        core.finetune(wider, output_dir=tmp_path / "a", host=host, init_from=captioner)
    with pytest.raises(core.ConfigError, match="is not a model folder"):
        core.finetune(caption_cfg(caption_dir, epochs=1), output_dir=tmp_path / "b", host=host, init_from=tmp_path)
    from mmassist.core.runtime.tokenizer import build_tokenizer

    other = tmp_path / "tok"
    build_tokenizer(["a red square", "a blue square"] * 50, vocab_size=300).save_pretrained(str(other))
    retok = caption_cfg(caption_dir, epochs=1)
    retok["decoder"]["tokenizer"] = str(other)
    with pytest.raises(core.ConfigError, match="another tokenizer"):
        core.finetune(retok, output_dir=tmp_path / "c", host=host, init_from=captioner)
    no_image = caption_cfg(caption_dir, epochs=1)
    no_image["encoders"]["image"]["config"]["model_name"] = "test_resnet"
    with pytest.raises(core.ConfigError, match="has weights this config's model lacks"):
        core.finetune(no_image, output_dir=tmp_path / "d", host=host, init_from=captioner)


def test_the_feature_cache_gives_the_same_losses(caption_dir, host, tmp_path):
    runs = {}
    for cache in (True, False):
        res = core.finetune(caption_cfg(caption_dir, epochs=2, feature_cache=cache, log_every=1),
                            output_dir=tmp_path / f"run{cache}", host=host)
        runs[cache] = [h["loss"] for h in res.history if h["split"] == "train" and "loss" in h]
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_a_bad_dataset_line_is_reported_with_its_line_number(caption_dir, host, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes((caption_dir / "img0.png").read_bytes())
    (bad / "captions.jsonl").write_text('{"file": "a.png", "caption": "ok"}\n{"file": "a.png", "caption": \n')
    with pytest.raises(core.DataFormatError, match=r"captions\.jsonl:2"):
        core.finetune(caption_cfg(bad), output_dir=tmp_path / "run", host=host)


def test_a_generated_metric_without_generated_answers_is_a_config_error(caption_dir, host, tmp_path):
    # exact match needs answers generated on the validation split; none would be, so say so up front
    # rather than fail with a KeyError after the first epoch.
    with pytest.raises(core.ConfigError, match="eval_generate"):
        core.finetune(caption_cfg(caption_dir, epochs=1), output_dir=tmp_path / "run", host=host,
                      **{"training.metric": "exact_match", "training.eval_generate": 0})
    assert not (tmp_path / "run").exists()


def test_the_config_passed_in_is_unchanged(caption_dir, host, tmp_path):
    cfg = core.FusionConfig.from_dict(caption_cfg(caption_dir, epochs=1))
    raw = caption_cfg(caption_dir, epochs=1)
    before_cfg, before_raw = copy.deepcopy(cfg), copy.deepcopy(raw)
    core.finetune(cfg, output_dir=tmp_path / "a", host=host, **{"training.lr": 1e-3})
    core.finetune(raw, output_dir=tmp_path / "b", host=host)
    assert cfg == before_cfg and raw == before_raw


def _run_script(tmp_path: Path, cfg: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    core.FusionConfig.from_dict(cfg).save(path)
    return path


def _env() -> dict:
    env = dict(os.environ, MMASSIST_NO_PLUGINS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(classify_file, host, tmp_path):
    cfg = classify_cfg(classify_file, epochs=6, save_every=2, eval_every=4)
    path = _run_script(tmp_path, cfg, "cfg")
    cli = [sys.executable, "-m", "mmassist.core", "finetune", str(path)]
    subprocess.run(cli + ["-o", str(tmp_path / "full")], check=True, env=_env(), capture_output=True)
    proc = subprocess.Popen(cli + ["-o", str(tmp_path / "cut")], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = tmp_path / "cut" / "checkpoints" / "step-000006"
    deadline = time.time() + 240
    while not (target / "manifest.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "final_metrics.json").exists(), "the run ended before it was killed"
    latest = sorted((tmp_path / "cut" / "checkpoints").glob("step-*"))[-1]
    subprocess.run(cli + ["-o", str(tmp_path / "cut"), "--resume-from", str(latest)], check=True, env=_env(),
                   capture_output=True)
    a = core.Assistant.from_pretrained(tmp_path / "full", host=host)
    b = core.Assistant.from_pretrained(tmp_path / "cut", host=host)
    for (name, x), y in zip(weights(a.model).items(), weights(b.model).values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def one_process_run(classify_file, tmp_path_factory):
    """The reference for the multi-process runs: one process, a batch of 4."""
    tmp = tmp_path_factory.mktemp("one")
    cfg = classify_cfg(classify_file, epochs=2, batch_size=4, eval_every=3, dropout=0.0)
    subprocess.run([sys.executable, "-m", "mmassist.core", "finetune", str(_run_script(tmp, cfg, "one")),
                    "-o", str(tmp / "run")], check=True, env=_env(), capture_output=True)
    return cfg, tmp / "run"


@pytest.mark.parametrize("strategy,port", [("ddp", 29517), ("fsdp", 29527)])
def test_two_processes_match_one_process_with_the_same_global_batch(one_process_run, strategy, port, tmp_path):
    cfg, one = one_process_run
    two_cfg = copy.deepcopy(cfg)
    two_cfg["training"].update(batch_size=2, strategy=strategy)  # per process: the same global batch of 4
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                "-m", "mmassist.core", "finetune", str(_run_script(tmp_path, two_cfg, "two")), "-o", str(tmp_path / "two")]
    done = subprocess.run(torchrun, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    host = core.Host(load_entrypoints=False)
    a = core.Assistant.from_pretrained(one, host=host)
    b = core.Assistant.from_pretrained(tmp_path / "two", host=host)
    # Two processes sum gradients in another order than one: Adam turns that float noise into
    # differences of about 1.5e-5 on weights of about 0.1 after 8 steps (measured, DDP and FSDP).
    for (name, x), y in zip(weights(a.model).items(), weights(b.model).values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=5e-5, msg=name)


def test_param_groups_give_per_component_lrs_and_no_decay_on_norms_and_biases(classify_file, host):
    from mmassist.core.training.finetune import apply_freezing, param_groups

    cfg = core.FusionConfig.from_dict(classify_cfg(classify_file, lr=1e-3, lr_fusion=2e-3, lr_head=3e-3))
    cfg = cfg.override(**{"encoders.image.lr": 4e-4, "decoder.lr": 5e-4})
    model = core.Assistant.from_config(cfg, host=host).model
    apply_freezing(model, cfg)
    by_param = {id(p): g for g in param_groups(model, cfg) for p in g["params"]}
    expected_lr = {"encoders.image.": 4e-4, "decoder.": 5e-4, "fusion.": 2e-3, "head.": 3e-3}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in by_param
            continue
        group = by_param[id(p)]
        assert group["lr"] == next(v for k, v in expected_lr.items() if name.startswith(k)), name
        assert group["weight_decay"] == (cfg.training.weight_decay if p.ndim >= 2 else 0.0), name
    # classification never uses the LM head: it is not trained (nor left for DDP to wait on)
    assert not model.decoder.lm_head.weight.requires_grad


def test_gradient_accumulation_equals_a_bigger_batch(classify_file, host, tmp_path):
    base = classify_cfg(classify_file, epochs=1, dropout=0.0, eval_every=100, group_by_length=False)
    base["data"]["validation_fraction"] = 0.0
    big = core.finetune(base, output_dir=tmp_path / "big", host=host)
    small = core.finetune(base, output_dir=tmp_path / "small", host=host,
                          **{"training.batch_size": 2, "training.grad_accum": 2})
    a = core.Assistant.from_pretrained(big.output_dir, host=host)
    b = core.Assistant.from_pretrained(small.output_dir, host=host)
    # Float noise from summing in two halves, grown by Adam: about 1.5e-5 (measured).
    for (name, x), y in zip(weights(a.model).items(), weights(b.model).values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=5e-5, msg=name)


def test_gradient_checkpointing_gives_the_same_losses(caption_dir, host, tmp_path):
    runs = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        res = core.finetune(caption_cfg(caption_dir, epochs=1, gradient_checkpointing=ckpt, log_every=1,
                                        dropout=0.0),
                            output_dir=tmp_path / f"run{ckpt}", host=host)
        runs[ckpt] = [h["loss"] for h in res.history if h["split"] == "train" and "loss" in h]
    assert len(runs[True]) >= 2
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)


def test_lora_on_an_encoder_trains_its_adapters_and_merges(caption_dir, host, tmp_path):
    cfg = caption_cfg(caption_dir, epochs=1, lora={"enabled": True, "r": 4, "encoders": ["image"]})
    cfg["encoders"]["image"]["freeze"] = False
    before, after, asst = train_and_reload(cfg, host, tmp_path / "run")
    changed_enc = {n for n in before if n.startswith("encoders.image.") and not torch.equal(before[n], after[n])}
    assert changed_enc and all("lora_" in n for n in changed_enc), sorted(changed_enc)[:5]
    merged = asst.merged()
    assert not any("lora_" in n for n in merged.model.state_dict())
    conv = asst.processor.conversation("Describe.", {"image": [caption_dir / "img0.png"]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)])
    with torch.no_grad():
        torch.testing.assert_close(merged.model(batch).logits, asst.model(batch).logits, atol=1e-4, rtol=1e-4)
