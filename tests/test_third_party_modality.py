"""A modality the core has never heard of, all the way through: ``examples/mmassist-signal`` (``.csv`` / ``.npy``
sensor recordings) pip-installed as users install it (non-editable, into a folder of its own), then
fine-tuned three ways (``mmassist finetune``, ``core.finetune`` from Python, the web app's Fine-tune tab),
chatted with and captioned, and its checkpoints loaded in fresh processes. Each check runs in a fresh
interpreter whose import path holds only that folder, so the host finds the plugin by its entry point.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from test_third_party_plugin import install_example, run_json, run_python

REPO = Path(__file__).resolve().parents[1]
SIGNAL_EXAMPLE = REPO / "examples" / "mmassist-signal"
CONFIG = SIGNAL_EXAMPLE / "activity.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_example(SIGNAL_EXAMPLE, tmp_path_factory.mktemp("signal"))


@pytest.fixture(scope="module")
def data(site, tmp_path_factory) -> dict[str, Path]:
    """The plugin's demo data, written by its own command: 16 recordings to train on, 8 held out."""
    root = tmp_path_factory.mktemp("activity")
    for name, args in (("train", ["4", "0"]), ("held", ["2", "1"])):
        done = run_python(["-c", "import sys; from mmassist_signal.demo import activity_dataset; "
                                 "print(activity_dataset(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))",
                           str(root / name), *args], site)
        assert done.returncode == 0, done.stderr
    return {"train": root / "train", "held": root / "held"}


def right(captions: dict[str, str]) -> int:
    """How many held-out recordings got their activity's caption (the file name says which)."""
    return sum(caption == f"a person {Path(file).name.split('_')[0]}" for file, caption in captions.items())


CLI_CAPTION = """
    import json, subprocess, sys
    done = subprocess.run([sys.executable, "-m", "mmassist.core", "caption", "--model", sys.argv[1], *sys.argv[2:]],
                          capture_output=True, text=True)
    rows = [line.split("\\t") for line in done.stdout.splitlines() if "\\t" in line]
    print(json.dumps({"rc": done.returncode, "stderr": done.stderr[-2000:], "captions": dict(rows)}))
"""


def test_fine_tuned_with_the_cli_and_loaded_in_a_fresh_process(site, data, tmp_path):
    run = tmp_path / "run"
    done = run_python(["-m", "mmassist.core", "finetune", str(CONFIG), "-o", str(run),
                       "--set", f"data.train={data['train']}"], site)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["encoders"]["signal"] == {"name": "signal/conv1d", "plugin": "signal",
                                              "distribution": "mmassist-signal", "version": "0.1.0"}
    held = sorted(str(p) for p in data["held"].glob("*.csv"))
    report = run_json(CLI_CAPTION, site, str(run), *held)
    assert report["rc"] == 0, report["stderr"]
    assert right(report["captions"]) >= 7, report["captions"]


PYTHON_PATH = """
    import json, sys
    from pathlib import Path
    import numpy as np
    from mmassist import core

    config, train, held, out = sys.argv[1:5]
    cfg = core.FusionConfig.from_file(config).override(**{"data.train": train})
    result = core.finetune(cfg, output_dir=out)
    assistant = core.Assistant.from_pretrained(result.output_dir)
    files = sorted(Path(held).glob("*.csv"))
    walking = next(f for f in files if f.name.startswith("walking"))
    npy = Path(out) / "walking.npy"  # the same recording as a NumPy array, named anything
    np.save(npy, np.loadtxt(walking, delimiter=",", skiprows=1, dtype=np.float32))
    weird = npy.rename(Path(out) / "walking.recording")
    print(json.dumps({
        "captions": dict(zip(map(str, files), assistant.caption([str(f) for f in files]))),
        "chat_part": assistant.chat([{"role": "user", "content": [
            {"type": "signal", "signal": str(walking)}, {"type": "text", "text": "Describe this signal."}]}]),
        "chat_media": assistant.chat("Describe this signal.", media=[str(walking)]),
        "npy_by_magic": assistant.caption(str(weird)),
        "routed": core.Host().route(str(walking))[0].name,
    }))
"""


@pytest.fixture(scope="module")
def python_run(site, data, tmp_path_factory) -> tuple[dict, Path]:
    run = tmp_path_factory.mktemp("python") / "run"
    return run_json(PYTHON_PATH, site, str(CONFIG), str(data["train"]), str(data["held"]), str(run)), run


def test_fine_tuned_from_python_then_chatted_with_and_captioned(python_run):
    report, _ = python_run
    assert right(report["captions"]) >= 7, report["captions"]
    assert report["chat_part"] == report["chat_media"] == "a person walking"
    assert report["npy_by_magic"] == "a person walking"
    assert report["routed"] == "signal/conv1d"


WEB_APP = """
    import json, sys, time
    from pathlib import Path
    import yaml
    from gradio_client import Client, handle_file
    from mmassist.ui.app import build_app
    from mmassist.ui.testing import serve

    model, dataset, config_yaml, held, runs = sys.argv[1:6]
    app = build_app(model, runs_dir=runs)
    form = {"task_kind": "caption", "task_prompt": "Describe this signal.", "task_labels": "", "training_epochs": 40,
            "training_max_steps": None, "training_batch_size": 4, "training_lr": 5e-3, "training_eval_every": None,
            "data_validation_fraction": 0.0, "decoder_freeze": False, "training_lora_enabled": False}
    with serve(app) as url:
        client = Client(url, verbose=False)
        client.predict(dataset=handle_file(dataset), data_path="", config_yaml=config_yaml,
                       api_name="/start_finetune", **form)
        deadline = time.time() + 240
        while time.time() < deadline:
            status = client.predict(api_name="/job_status")
            if status["phase"] in ("done", "stopped", "failed"):
                break
            time.sleep(0.5)
        trained = status.get("output_dir") or ""
        walking = next(p for p in sorted(Path(held).glob("*.csv")) if p.name.startswith("walking"))
        answer = client.predict({"text": "Describe this signal.", "files": [handle_file(str(walking))]},
                                trained, 0.0, 1.0, 24, api_name="/chat") if trained else ""
        rows = client.predict([handle_file(str(p)) for p in sorted(Path(held).glob("*.csv"))], trained,
                              api_name="/caption") if trained else None
    print(json.dumps({"phase": status["phase"], "error": status.get("error"), "output_dir": trained,
                      "answer": answer, "rows": rows}))
"""


def test_fine_tuned_in_the_web_app(site, data, python_run, tmp_path):
    first = python_run[1]  # the app needs a model to start with: any will do
    dataset = tmp_path / "activity.zip"
    with zipfile.ZipFile(dataset, "w") as zf:
        for f in sorted(data["train"].iterdir()):
            zf.write(f, f"activity/{f.name}")
    config = yaml.safe_load(CONFIG.read_text())
    config["data"].pop("train")
    report = run_json(WEB_APP, site, str(first), str(dataset), yaml.safe_dump(config), str(data["held"]),
                      str(tmp_path / "runs"))
    assert report["phase"] == "done", report
    assert report["answer"] == "a person walking", report
    assert Path(report["output_dir"]).is_relative_to(tmp_path / "runs")
    assert "a person walking" in json.dumps(report["rows"]), report["rows"]
