"""The web app, served in this process on a free local port and driven through gradio_client.

A tiny captioning model (it answers "a red square" for a red square) is fine-tuned once for the
module; the app gets it as its default model. Every check goes through the app's public endpoints
the way a browser or a script would: /chat, /caption, /start_finetune, /job_status, /models...
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from mmassist import core
from mmassist.ui.testing import COLOURS, serve, tiny_caption_config, tiny_model

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT_MB = 1
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(host, tmp_path_factory):
    """The colour squares and a tiny model that captions them exactly (shared with the browser test)."""
    return tiny_model(tmp_path_factory.getbasetemp() / "ui-tiny", host=host)


@pytest.fixture(scope="module")
def squares(trained):
    return trained[0]


@pytest.fixture(scope="module")
def tiny_model_dir(trained):
    return trained[1]


@pytest.fixture(scope="module")
def app(tiny_model_dir, host, tmp_path_factory):
    from mmassist.ui.app import build_app

    return build_app(str(tiny_model_dir), host=host, upload_limit_mb=UPLOAD_LIMIT_MB,
                     runs_dir=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def url(app):
    with serve(app) as address:
        yield address


@pytest.fixture(scope="module")
def client(url):
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    import numpy as np

    from mmassist.core.contract.testing import moving_shapes, write_test_video

    folder = tmp_path_factory.mktemp("video")
    return write_test_video(folder / "shapes.mp4", moving_shapes(16, seed=0).astype(np.uint8), fps=8)


def ask(client: Client, text: str, *files: Path, model: str = "", follow_up: bool = False, **kw) -> str:
    """One chat turn; a new conversation unless ``follow_up``."""
    if not follow_up:
        client.reset_session()
    message = {"text": text, "files": [handle_file(str(f)) for f in files]}
    return client.predict(message, model, kw.get("temperature", 0.0), kw.get("top_p", 1.0),
                          kw.get("max_new_tokens", 20), api_name="/chat")


def wait_for_job(client: Client, until=lambda s: s["phase"] in ("done", "stopped", "failed"), timeout=120):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        status = client.predict(api_name="/job_status")
        seen.append(status)
        if until(status):
            return status, seen
        time.sleep(0.3)
    raise AssertionError(f"the job did not get there in {timeout} s; last status {seen[-1] if seen else None}")


# -- chat ---------------------------------------------------------------------------------------


def test_a_chat_turn_with_an_image_streams_the_right_answer_and_a_follow_up_works(client, squares):
    client.reset_session()
    job = client.submit({"text": "Describe.", "files": [handle_file(str(squares / "red.png"))]}, "", 0.0, 1.0,
                        20, api_name="/chat")
    assert job.result(timeout=60) == "a red square"
    pieces = [p for p in job.outputs() if p]
    assert len(pieces) > 1 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:])), "no stream"
    # a follow-up in the same session carries the earlier turns, their image included
    assert isinstance(ask(client, "And this one?", squares / "green.png", follow_up=True), str)
    assert ask(client, "", squares / "blue.png") == "a blue square"  # no text: the model's own prompt


def test_the_history_keeps_answered_turns_with_their_files_and_drops_failed_ones():
    from mmassist.ui.chat import history_turns

    history = [
        {"role": "user", "content": [{"path": "/a.png"}, "what is this?"]},  # as ChatInterface appends it
        {"role": "assistant", "content": "a red square"},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/broken.mp4"}}]},  # failed: no answer
        {"role": "user", "content": [{"type": "text", "text": "and this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a blue square"}]},
    ]
    assert history_turns(history) == [("user", "what is this?", ["/a.png"]), ("assistant", "a red square", []),
                                      ("user", "and this?", []), ("assistant", "a blue square", [])]


def test_a_system_prompt_from_the_parameters_goes_before_the_conversation():
    from mmassist.ui.chat import conversation

    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]
    messages = conversation(history, "Tell me a joke.", [], None, None, system_prompt=" Be brief. ")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert conversation(history, "Tell me a joke.", [], None, None)[0]["role"] == "user"  # empty: the model's own


def test_the_chat_sliders_start_at_the_picked_models_own_decoding_defaults(tiny_model_dir, host, tmp_path):
    """A model saved with its own decoding defaults (the starter's are chosen against loops) gets them in
    the Chat tab's sliders, as the page's first state and when it is picked."""
    import shutil

    from mmassist.ui.app import build_app
    from mmassist.ui.models import ModelStore

    chatty = tmp_path / "chatty"
    shutil.copytree(tiny_model_dir, chatty)
    config = json.loads((chatty / "config.json").read_text())
    config["generation"].update(temperature=0.7, top_p=0.9, max_new_tokens=300)
    (chatty / "config.json").write_text(json.dumps(config))
    store = ModelStore(host, tmp_path / "runs")
    gen = store.generation(str(chatty))
    assert (gen.temperature, gen.top_p, gen.max_new_tokens) == (0.7, 0.9, 300)
    assert store.generation(str(tmp_path / "nowhere")) == core.GenerationConfig()  # loading it will say why

    app = build_app(str(chatty), host=host, runs_dir=tmp_path / "runs")
    sliders = {c["props"]["label"]: c["props"]["value"] for c in app.config["components"]
               if c.get("type") == "slider"}
    assert (sliders["Temperature"], sliders["Top-p"], sliders["Max new tokens"]) == (0.7, 0.9, 300)
    with serve(app) as address:
        picked = Client(address, verbose=False).predict(str(tiny_model_dir), fn_index=model_change_fn(app))
    assert list(picked) == [0.0, 1.0, 20]  # the tiny captioner's own: greedy, 20 tokens


def model_change_fn(app) -> int:
    """The index of the event that sets the sliders when the model box changes."""
    return fn_named(app, "model_defaults")


def fn_named(app, name: str) -> int:
    """The index of the app's event whose function is called ``name`` (for events with no API name)."""
    for i, fn in app.fns.items():
        if getattr(fn.fn, "__name__", "") == name:
            return i
    raise AssertionError(f"no {name} event")


def test_sixteen_concurrent_chats_all_get_their_own_right_answer(url, squares):
    colours = [list(COLOURS)[i % len(COLOURS)] for i in range(16)]

    def one(colour: str) -> str:
        own = Client(url, verbose=False)  # a session each: no shared history
        return ask(own, "Describe.", squares / f"{colour}.png")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, colours, timeout=240))
    assert answers == [f"a {c} square" for c in colours]


# -- caption ------------------------------------------------------------------------------------


def test_caption_many_files_with_csv_and_jsonl_downloads(client, squares, clip):
    files = [squares / "yellow.png", squares / "green.png", clip]
    table, downloads = client.predict([handle_file(str(f)) for f in files], "", api_name="/caption")
    rows = table["data"]
    assert [r[0] for r in rows] == ["yellow.png", "green.png", "shapes.mp4"]
    assert rows[0][1] == "a yellow square" and rows[1][1] == "a green square"
    assert isinstance(rows[2][1], str) and rows[2][1], "the video got no caption"
    by_name = {Path(p).name: Path(p) for p in downloads}
    assert by_name["captions.csv"].read_text().splitlines()[0] == "file,caption"
    records = [json.loads(line) for line in by_name["captions.jsonl"].read_text().splitlines()]
    assert records[0] == {"file": "yellow.png", "caption": "a yellow square"}


# -- bad input ----------------------------------------------------------------------------------


def app_error(call) -> str:
    with pytest.raises(Exception) as info:
        call()
    return str(info.value)


def test_bad_inputs_give_readable_errors_and_the_app_keeps_serving(client, url, squares, clip, tmp_path):
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(clip.read_bytes()[:1500])  # an MP4 header, then nothing
    message = app_error(lambda: client.predict([handle_file(str(corrupt))], "", api_name="/caption"))
    assert "broken.mp4" in message and "video" in message and "/gradio/" not in message, message
    table, downloads = client.predict([handle_file(str(squares / "red.png")), handle_file(str(corrupt))], "",
                                      api_name="/caption")  # one good file, one bad: the bad one says why
    assert table["headers"] == ["file", "caption"] and table["data"][0] == ["red.png", "a red square"]
    bad = table["data"][1][1]
    assert bad.startswith("⚠ not captioned:") and "broken.mp4" in bad and "/gradio/" not in bad, bad
    exported = [json.loads(line) for line in next(Path(p) for p in downloads if p.endswith(".jsonl")).read_text(
        encoding="utf-8").splitlines()]
    assert exported[1]["file"] == "broken.mp4" and exported[1]["caption"] == "" and "broken.mp4" in exported[1]["error"]
    assert "video" in app_error(lambda: ask(client, "Describe.", corrupt)).lower()

    fake = tmp_path / "notes.png"
    fake.write_text("this is text, not a picture\n" * 20)
    message = app_error(lambda: ask(client, "Describe.", fake))
    assert "notes.png" in message, message

    wrong = tmp_path / "notes.txt"
    wrong.write_text("plain text")
    assert "file type" in app_error(lambda: ask(client, "Describe.", wrong)).lower()

    big = tmp_path / "big.png"
    big.write_bytes((squares / "red.png").read_bytes() + b"\0" * (UPLOAD_LIMIT_MB * 1024 * 1024 + 10))
    assert "maximum file size" in app_error(lambda: ask(client, "Describe.", big))  # refused before sending
    import httpx

    with big.open("rb") as f:  # and the server refuses it too, for clients that do not check
        reply = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert reply.status_code == 413 and "size" in reply.text.lower(), reply.text

    assert "not a folder" in app_error(lambda: ask(client, "Describe.", squares / "red.png",
                                                   model=str(tmp_path / "nowhere")))
    if _starter_exists():  # installed with the package: it answers
        assert ask(client, "hello", model="starter", max_new_tokens=8)
    else:  # absent from this install: the app says so and what to do instead
        assert "starter" in app_error(lambda: ask(client, "hello", model="starter"))
    assert ask(client, "Describe.", squares / "yellow.png") == "a yellow square"  # still serving


def _starter_exists() -> bool:
    try:
        core.Assistant.from_pretrained("starter")
    except Exception:
        return False
    return True


# -- fine-tune ----------------------------------------------------------------------------------


def zipped(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"squares/{f.name}")
    return target


FORM = {"task_kind": "caption", "task_prompt": "Describe.", "task_labels": "", "training_epochs": 100,
        "training_max_steps": 6, "training_batch_size": 4, "training_lr": 5e-3, "training_eval_every": 3,
        "data_validation_fraction": 0.25, "decoder_freeze": False, "training_lora_enabled": False}


def start(client: Client, dataset: Path, init_model: str = "", name: str = "", config: dict | None = None, **form):
    """Start a fine-tune with the tiny config in the YAML; the form's values win over it."""
    config = config or tiny_caption_config(None, video=False, epochs=100)
    return client.predict(dataset=handle_file(str(dataset)), data_path="", config_yaml=yaml.safe_dump(config),
                          init_model=init_model, name=name, api_name="/start_finetune", **{**FORM, **form})


def test_a_short_fine_tune_reports_progress_and_its_model_can_be_chosen_in_chat(client, squares, tmp_path):
    start(client, zipped(squares, tmp_path / "squares.zip"))
    status, seen = wait_for_job(client)
    assert status["phase"] == "done", status
    assert status["max_steps"] == 6 and status["step"] == 6  # the form's max_steps won over the YAML's epochs
    series = {p["series"] for p in status["points"]}
    assert series == {"train loss", "validation loss"}
    assert [p["step"] for p in status["points"] if p["series"] == "train loss"] == [1, 2, 3, 4, 5, 6]
    assert "validation" in status["metrics"] and "loss" in status["metrics"]["validation"]
    model = status["output_dir"]
    assert str(Path(model).resolve()) in client.predict(api_name="/models")
    answer = ask(client, "Describe.", squares / "red.png", model=model)
    assert isinstance(answer, str)


def test_a_named_run_logs_reports_with_examples_and_is_in_the_history(client, app, squares, tmp_path):
    from mmassist.ui.runs import report_markdown, run_history

    start(client, zipped(squares, tmp_path / "squares.zip"), name="my-squares", training_max_steps=3,
          config=tiny_caption_config(None, video=False, eval_generate=4))  # answers to show beside the scores
    status, _ = wait_for_job(client)
    assert status["phase"] == "done" and Path(status["output_dir"]).name == "my-squares", status
    log = "\n".join(status["log"])
    assert "training 3 steps from scratch" in log and "step 3: validation loss" in log and "done:" in log, log
    shown = status["metrics"]["validation"]["samples"]
    assert shown and shown[0]["input"].startswith("[") and shown[0]["reference"].endswith("square"), shown
    report = report_markdown(status["metrics"])
    assert "| split |" in report and "validation examples" in report and shown[0]["reference"] in report
    [row] = [r for r in run_history(app.mmassist.runs_dir) if r[0] == "my-squares"]
    assert row[1:4] == ["caption", "model saved", 3], row
    assert "exists already" in app_error(lambda: start(client, squares / "captions.jsonl", name="my-squares"))
    assert "letters, digits" in app_error(lambda: start(client, squares / "captions.jsonl", name="../up"))


def test_a_run_can_start_from_a_trained_models_weights(client, app, tiny_model_dir, squares, tmp_path):
    """Start from the app's tiny captioner, its config as the YAML (what picking it in the form gives), one
    step at a negligible rate: the new model still captions as the old one did."""
    from mmassist.ui.runs import model_config_yaml

    config = yaml.safe_load(model_config_yaml(tiny_model_dir))
    assert "train" not in config["data"]  # the new run gives its own data
    picked = client.predict(str(tiny_model_dir), fn_index=fn_named(app, "pick_model"))
    assert yaml.safe_load(picked[0]) == config and picked[0].startswith("# starts from the weights of")
    start(client, zipped(squares, tmp_path / "squares.zip"), init_model=str(tiny_model_dir), config=config,
          training_max_steps=1, training_lr=1e-9, data_validation_fraction=0.0)
    status, _ = wait_for_job(client)
    assert status["phase"] == "done", status
    assert f"from {tiny_model_dir.resolve()}" in "\n".join(status["log"])
    assert ask(client, "Describe.", squares / "blue.png", model=status["output_dir"]) == "a blue square"


def test_the_dataset_preview_counts_the_splits_and_warns_of_a_tiny_validation(client, squares):
    config = yaml.safe_dump(tiny_caption_config(None, video=False))
    preview = client.predict(dataset=None, data_path=str(squares), config_yaml=config,
                             api_name="/preview_dataset", **{**FORM, "data_validation_fraction": 0.25})
    assert "| train | 3 |" in preview and "| validation (carved from train) | 1 |" in preview, preview
    assert "too few to pick the best step" in preview and "a red square" in preview


def test_one_job_at_a_time_and_stop_ends_a_job_early(client, squares, tmp_path):
    data = zipped(squares, tmp_path / "squares.zip")
    start(client, data, training_max_steps=400, training_eval_every=None, data_validation_fraction=0.0)
    wait_for_job(client, until=lambda s: s["step"] >= 2 or s["phase"] in ("done", "stopped", "failed"))
    assert "already running" in app_error(lambda: start(client, data))
    assert ask(client, "Describe.", squares / "green.png") == "a green square"  # chat works meanwhile
    client.predict(api_name="/stop_finetune")
    status, _ = wait_for_job(client)
    assert status["phase"] == "stopped" and 2 <= status["step"] < 400, status


def test_a_bad_config_or_dataset_is_a_readable_error(client, squares, tmp_path):
    assert "training.lr" in app_error(lambda: start(client, zipped(squares, tmp_path / "a.zip"), training_lr=-1))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no data here")
    message = app_error(lambda: start(client, zipped(empty, tmp_path / "b.zip")))
    assert "training data" in message, message
    # A dataset that only the run itself finds broken: the job fails, naming the line, and leaves no folder.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image": "x.png", "conversations": []}\n{not json\n', encoding="utf-8")
    start(client, broken)
    status, _ = wait_for_job(client)
    assert status["phase"] == "failed" and "broken.jsonl:1" in status["error"], status
    assert not Path(status["output_dir"]).exists()


def test_the_form_is_built_from_the_config_dataclasses():
    from mmassist.core.runtime.config import TASKS
    from mmassist.ui.forms import field_for, form_fields

    lr = field_for("training.lr")
    assert (lr.kind, lr.param) == ("float", "training_lr") and "learning rate" in lr.help
    assert field_for("task.kind").choices == TASKS and field_for("training.max_steps").optional
    assert field_for("task.labels").from_form("cat, dog ,") == ["cat", "dog"]
    with pytest.raises(core.ConfigError, match="training.batch_size"):
        field_for("training.batch_size").from_form(2.5)
    assert all(f.help for f in form_fields())
    assert (lr.label, field_for("training.max_steps").label) == ("Learning rate", "Max steps")


def test_uploaded_datasets_are_found_and_unsafe_zips_refused(squares, tmp_path):
    from mmassist.ui.datasets import prepare_dataset

    found = prepare_dataset(zipped(squares, tmp_path / "a.zip"), "", tmp_path / "run1")
    assert Path(found["train"]).name == "squares" and (Path(found["train"]) / "captions.jsonl").is_file()
    with zipfile.ZipFile(tmp_path / "splits.zip", "w") as zf:
        for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "README.md"):
            zf.writestr(name, "{}\n")
    found = prepare_dataset(tmp_path / "splits.zip", "", tmp_path / "run2")
    assert {k: Path(v).name for k, v in found.items()} == {"train": "train.jsonl", "validation": "dev.jsonl",
                                                            "test": "test.jsonl"}
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../../outside.txt", "gotcha")
    with pytest.raises(core.DataFormatError, match="outside the archive"):
        prepare_dataset(tmp_path / "evil.zip", "", tmp_path / "run3")
    assert not (tmp_path / "outside.txt").exists()
    assert prepare_dataset(None, "bundled:shapes/captions_train.jsonl", tmp_path) == {
        "train": "bundled:shapes/captions_train.jsonl"}


# -- plugins and options ------------------------------------------------------------------------


def test_the_plugins_tab_lists_encoders_with_types_and_origin(client):
    encoders, failed = client.predict(api_name="/plugins")
    rows = {r[0]: dict(zip(encoders["headers"], r)) for r in encoders["data"]}
    assert {"image/timm", "video/decord", "text/hf"} <= set(rows)
    assert ".png" in rows["image/timm"]["file extensions"] and ".mp4" in rows["video/decord"]["file extensions"]
    assert rows["image/timm"]["distribution"] == "mmassist"
    assert failed["headers"][-1] == "error"
    from mmassist.ui.app import plugin_tables

    _, none_failed = plugin_tables(core.Host(load_entrypoints=False))
    assert none_failed["data"] == [["none", "", "", "", "every installed plugin loaded"]]


def test_an_installed_audio_plugin_makes_audio_attachable_and_broken_plugins_are_listed(monkeypatch):
    from mmassist.ui.app import plugin_tables
    from mmassist.ui.shared import media_file_types

    monkeypatch.syspath_prepend(str(REPO / "examples" / "mmassist-audio"))
    import mmassist_audio

    class Broken:
        @core.hookimpl
        def register_encoders(self, register):
            raise RuntimeError("its weights are missing")

    host = core.Host(load_entrypoints=False, plugins=[mmassist_audio, Broken()])
    assert ".wav" in media_file_types(host)
    _, failed = plugin_tables(host)
    assert [row[0] for row in failed["data"]] == ["Broken"] and "weights are missing" in failed["data"][0][-1]


def test_launch_options_are_local_and_private_by_default():
    from mmassist.ui.server import launch_options

    opts = launch_options(auth="ann:secret", upload_limit_mb=5)
    assert opts["server_name"] == "127.0.0.1" and opts["share"] is False
    assert opts["auth"] == ("ann", "secret") and opts["max_file_size"] == "5mb"
    with pytest.raises(core.ConfigError, match="user:password"):
        launch_options(auth="nopassword")


def test_importing_ui_builds_nothing():
    import subprocess

    code = "import ui, sys; print('gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.stdout.strip() == "False", done.stderr


def test_the_cli_has_a_ui_command():
    from mmassist.core.cli import build_parser

    args = build_parser().parse_args(["ui", "--port", "7999", "--auth", "a:b", "--upload-limit-mb", "3"])
    assert (args.host, args.port, args.auth, args.upload_limit_mb) == ("127.0.0.1", 7999, "a:b", 3.0)
