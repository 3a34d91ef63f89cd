"""The `mmassist` command: output, exit codes and one-line errors, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmassist import core

ROOT = Path(__file__).resolve().parents[1]
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def mmassist(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, MMASSIST_NO_PLUGINS="1", PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_OFFLINE", None)  # the command must set it itself
    return subprocess.run([sys.executable, "-m", "mmassist.core", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_plugins_lists_the_builtin_encoders():
    out = mmassist("plugins")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODALITY", "MIME_TYPES"]
    for name in ("text/hf", "image/timm", "video/decord"):
        assert any(line.startswith(name) and "mmassist" in line for line in lines)
    data = json.loads(mmassist("plugins", "--json").stdout)
    assert {e["name"] for e in data["encoders"]} == {"text/hf", "image/timm", "video/decord"}
    assert data["failed_plugins"] == []


def test_the_version_is_one_flag_away():
    from mmassist.core import __version__

    out = mmassist("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"mmassist {__version__}"


@pytest.mark.parametrize("args,needle", [
    (("finetune", "no-such-config.yaml"), "cannot read config file"),
    (("eval", "no-such-model", "data.jsonl"), "is not a mmassist checkpoint"),
    (("finetune", "examples/configs/sst2_sentiment.yaml", "--set", "training.lr"), "section.key=value"),
    (("finetune", "examples/configs/sst2_sentiment.yaml", "--set", "training.lrr=1"), "unknown config key"),
    (("finetune", "examples/configs/sst2_sentiment.yaml", "--init-from", "no-such-model"), "is not a model folder"),
])
def test_user_errors_are_one_line_without_traceback(args, needle, capsys, monkeypatch):
    from mmassist.core.cli import main

    monkeypatch.chdir(ROOT)
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rows = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 30, 220))] * 3):
        Image.new("RGB", (32, 32), rgb).save(folder / f"img{i}.png")
        rows.append(json.dumps({"file": f"img{i}.png", "caption": f"a {name} square"}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    cfg = core.FusionConfig.from_dict({
        "encoders": {"image": {"name": "image/timm", "freeze": True,
                               "config": {"model_name": "test_vit", "image_size": 32}}},
        "decoder": {"init": TINY_LLAMA, "tokenizer": "bytes", "max_length": 128},
        "task": {"kind": "caption", "prompt": "Describe."},
        "data": {"train": "captions.jsonl", "validation_fraction": 0.0},
        "generation": {"max_new_tokens": 20},
        "training": {"epochs": 40, "batch_size": 3, "lr": 5e-3},
    })
    cfg.save(folder / "cfg.yaml")
    out = mmassist("finetune", str(folder / "cfg.yaml"), "-o", str(folder / "run"), cwd=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    return folder, out


def test_finetune_prints_progress_and_the_model_folder(tiny_run):
    folder, out = tiny_run
    assert "] 80/80 loss" in out.stderr  # the progress bar reached the end
    assert f"model saved in {folder / 'run'}" in out.stdout
    assert (folder / "run" / "model.safetensors").is_file()


def test_finetune_can_start_from_a_saved_model(tiny_run):
    """--init-from: a second run starts from the first one's weights (at a learning rate too small to
    learn anything itself), so it captions as the first one does."""
    folder, _ = tiny_run
    out = mmassist("finetune", str(folder / "cfg.yaml"), "-o", str(folder / "again"), "--init-from",
                   str(folder / "run"), "--set", "training.epochs=1", "--set", "training.lr=1e-9", cwd=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    out = mmassist("caption", str(folder / "img1.png"), "--model", str(folder / "again"))
    assert out.stdout.split("\t")[-1].strip() == "a blue square"


def test_eval_chat_and_caption_use_the_saved_model(tiny_run):
    folder, _ = tiny_run
    out = mmassist("eval", str(folder / "run"), str(folder / "captions.jsonl"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["exact_match"] == 1.0
    assert "evaluating: 2/2 batches" in out.stderr  # the loss pass, then the generated answers
    out = mmassist("caption", str(folder / "img0.png"), str(folder / "img1.png"), "--model", str(folder / "run"))
    assert out.stdout.splitlines() == [f"{folder / 'img0.png'}\ta red square", f"{folder / 'img1.png'}\ta blue square"]
    out = mmassist("chat", "Describe.", "--image", str(folder / "img1.png"), "--model", str(folder / "run"))
    assert out.stdout.strip() == "a blue square"
    bad = folder / "bad.png"
    bad.write_text("not an image")
    out = mmassist("chat", "Describe.", "--image", str(bad), "--model", str(folder / "run"))
    assert out.returncode == 2 and "cannot decode" in out.stderr and "Traceback" not in out.stderr
