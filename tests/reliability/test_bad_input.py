"""Bad input gets a specific MMAssistError whose message says what to do: through the Python API
(Assistant.chat / caption, core.finetune) and the command line (one line on stderr, status 2).

The web app's side of the same inputs is in test_app.py.
"""

from __future__ import annotations

import pytest

from mmassist import core

from .helpers import TINY_TEXT, assert_user_error, conversation, jsonl, run_cli, text_classifier_config, tiny_config

# file name -> (error class, words the message must hold: what is wrong, and what to do)
IMAGE_CASES = {
    "empty.png": (core.UndecodableInputError, ["empty", "give a non-empty file"]),
    "truncated.png": (core.UndecodableInputError, ["cannot decode", "give a valid PNG"]),
    "notes.png": (core.UndecodableInputError, ["as an image", "give a valid PNG"]),
    "bomb.png": (core.UndecodableInputError, ["decompression bomb", "resize it"]),
    "large.png": (core.UndecodableInputError, ["9000x9000", "over the limit", "raise max_pixels"]),
}
VIDEO_CASES = {
    "empty.mp4": (core.UndecodableInputError, ["empty", "give a non-empty file"]),
    "truncated.mp4": (core.UndecodableInputError, ["as a video", "give a valid MP4"]),
    "garbage.mp4": (core.UndecodableInputError, ["as a video", "give a valid MP4"]),
    "zero_frames.mp4": (core.UndecodableInputError, ["as a video", "give a valid MP4"]),
    "unknown_codec.mkv": (core.UndecodableInputError, ["as a video", "give a valid MP4"]),
}
UNSUPPORTED_CASES = {
    name: (core.UnsupportedInputError, ["no loaded plugin accepts", "pip install"])
    for name in ("report.pdf", "song.wav", "archive.bin")
}
ALL_CASES = {**IMAGE_CASES, **VIDEO_CASES, **UNSUPPORTED_CASES}


def check_message(error: Exception, name: str, words: list[str]) -> None:
    message = str(error)
    assert name in message, f"the message does not name the file: {message}"
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    assert "Traceback" not in message and len(message) < 1000


# -- media, through the Python API ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_caption_refuses_a_bad_file_with_a_specific_error(assistant, media, name):
    error_cls, words = ALL_CASES[name]
    with pytest.raises(error_cls) as info:
        assistant.caption(media[name])
    check_message(info.value, name, words)


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_chat_refuses_a_bad_attachment_with_a_specific_error(assistant, media, name):
    error_cls, words = ALL_CASES[name]
    kind = "images" if name in IMAGE_CASES else "videos" if name in VIDEO_CASES else "media"
    with pytest.raises(error_cls) as info:
        assistant.chat("What is in it?", **{kind: [media[name]]})
    check_message(info.value, name, words)
    # a bad file among good ones is still found, and named
    with pytest.raises(error_cls, match=name.replace(".", r"\.")):
        assistant.caption([media["red.png"], media[name], media["clip.mp4"]])


def test_a_missing_file_is_an_error_wherever_a_file_is_meant(assistant, host):
    with pytest.raises(core.UnsupportedInputError, match="no such file: 'a.png'"):
        assistant.caption(["a.png", "clip.mp4"])
    with pytest.raises(core.UnsupportedInputError, match="no such file: 'cat.png'"):
        assistant.chat("What is it?", images=["cat.png"])
    with pytest.raises(core.UnsupportedInputError, match="no such file: 'cat.png'"):
        assistant.chat([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                      {"type": "text", "text": "What is it?"}]}])
    with pytest.raises(core.UnsupportedInputError, match="no such file: 'clip.mp4'"):
        host.route("clip.mp4")
    assert host.route("clip dot mp4 is a nice name")[0].name == "text/hf"  # text is still text


def test_the_model_still_answers_after_bad_input(assistant, media):
    for name in ALL_CASES:
        with pytest.raises(core.MMAssistError):
            assistant.caption(media[name])
    assert isinstance(assistant.caption(media["red.png"]), str)
    assert isinstance(assistant.chat("What happens?", videos=[media["clip.mp4"]]), str)


def test_a_video_over_the_frame_limit_is_refused_before_decoding(host, media, tmp_path, capsys):
    cfg = tiny_config()
    cfg["encoders"]["video"]["config"]["max_video_frames"] = 10  # the clip has 16
    asst = core.Assistant.from_config(cfg, host=host)
    with pytest.raises(core.UndecodableInputError, match=r"16 frames, over the limit of 10.*max_video_frames"):
        asst.caption(media["clip.mp4"])
    folder = asst.save_pretrained(tmp_path / "limited")
    code, out, err = run_cli(["caption", media["clip.mp4"], "--model", folder], capsys)
    assert_user_error(code, err, "clip.mp4", "over the limit", "video.max_video_frames")
    assert out == ""


def test_a_100k_character_prompt_is_refused_not_run(assistant, capsys, checkpoint):
    prompt = "why " * 25_000  # refused after tokenizing, before any tensor the size of the prompt is made
    with pytest.raises(core.UnsupportedInputError) as info:
        assistant.chat(prompt)
    assert "100" in str(info.value) and "decoder.max_length=256" in str(info.value)
    assert "shorten it or raise decoder.max_length" in str(info.value)
    with pytest.raises(core.UnsupportedInputError, match="over decoder.max_length"):
        assistant.chat([{"role": "user", "content": [{"type": "text", "text": prompt}]}], stream=True)
    code, _, err = run_cli(["chat", prompt, "--model", checkpoint], capsys)
    line = assert_user_error(code, err, "over decoder.max_length", "shorten it")
    assert len(line) < 400, "the error must not echo the prompt"


def test_a_non_utf8_text_file_given_as_media_is_refused(assistant, host, tmp_path):
    latin1 = tmp_path / "letter.txt"
    latin1.write_bytes("Caf\xe9 cr\xe8me, d\xe9j\xe0 vu: \xab na\xefve \xbb\n".encode("latin-1") * 5)
    # a model with a text encoder reads it, and says how to fix it
    reader = core.Assistant.from_config(tiny_config(encoders={"text": TINY_TEXT}), host=host)
    with pytest.raises(core.UndecodableInputError) as info:
        reader.chat("Summarise <text>.", media=[latin1])
    check_message(info.value, "letter.txt", ["not UTF-8", "convert it to UTF-8"])
    # a model without one says it takes no text files
    with pytest.raises(core.UnsupportedInputError, match="letter.txt is text input .*which this model does not take"):
        assistant.chat("Summarise it.", media=[latin1])


# -- media, through the command line ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_cli_caption_reports_a_bad_file_in_one_line(checkpoint, media, name, capsys):
    _, words = ALL_CASES[name]
    code, out, err = run_cli(["caption", media[name], "--model", checkpoint], capsys)
    assert_user_error(code, err, name, *words)
    assert out == ""


def test_cli_chat_reports_bad_attachments_in_one_line(checkpoint, media, capsys):
    for flag, name in (("--image", "notes.png"), ("--video", "truncated.mp4"), ("--media", "report.pdf")):
        code, _, err = run_cli(["chat", "Describe.", flag, media[name], "--model", checkpoint], capsys)
        assert_user_error(code, err, name, *ALL_CASES[name][1])


def test_cli_reports_a_missing_file_or_model_folder(checkpoint, tmp_path, capsys):
    code, _, err = run_cli(["caption", tmp_path / "nowhere.png", "--model", checkpoint], capsys)
    assert_user_error(code, err, "no such file", "nowhere.png")
    code, out, err = run_cli(["caption", "cat.png", "--model", checkpoint], capsys)  # not read as text
    assert_user_error(code, err, "no such file", "cat.png")
    assert out == ""
    for flag in ("--image", "--video", "--media"):
        code, _, err = run_cli(["chat", "Describe.", flag, "cat.png", "--model", checkpoint], capsys)
        assert_user_error(code, err, "no such file", "cat.png")
    code, _, err = run_cli(["chat", "hi", "--model", tmp_path / "no-model"], capsys)
    assert_user_error(code, err, "no-model", "is not a mmassist checkpoint")


# -- datasets ----------------------------------------------------------------------------------------

# name -> (file content (bytes or str), task, line, words)
DATASETS = {
    "bad_line.jsonl": (jsonl([conversation(None), conversation(None), '{"conversations": [}']), "chat", 3,
                       ["invalid JSON"]),
    "array.json": ("[\n" + jsonl([conversation(None)]).strip() + "\n  {}\n]", "chat", 3, ["expected ','"]),
    "wrong_type.jsonl": (jsonl([conversation(None), ["a", "list"]]), "chat", 2, ["must be a JSON object"]),
    "no_answer.jsonl": (jsonl([{"conversations": [{"from": "human", "value": "hi"}]}]), "chat", 1,
                        ["no assistant turn"]),
    "columns.csv": ("sentence,label\ngood,positive\nbad,negative\nfine, really,positive\n", "classification", 4,
                    ["3 column(s)", "must be quoted"]),
    "quote.csv": ('sentence,label\ngood,positive\n"unclosed,negative\n', "classification", 3,
                  ["1 column(s) but the header has 2"]),
    "latin1.tsv": (b"great film\t1\nawful\t0\ncaf\xe9 noir\t1\n", "classification", 3,
                   ["not valid UTF-8", "save the file as UTF-8"]),
    "unknown_label.tsv": ("great film\tpositive\ndull\tmeh\n", "classification", 2,
                          ["unknown label 'meh'", "known labels: negative, positive"]),
    "empty_label.csv": ("sentence,label\ngreat film,positive\ndull,\n", "classification", 3, ["the label is empty"]),
    "no_label.jsonl": (jsonl([{"sentence": "great", "label": "positive"}, {"sentence": "dull"}]), "classification",
                       2, ["no 'label'", "data.label_column"]),
    "header.csv": ("text,sentiment\ngreat,positive\n", "classification", 1,
                   ["neither a header", "Set data.text_column and data.label_column"]),
    "empty.tsv": ("\n\n", "classification", 1, ["the file is empty"]),
}


def write_dataset(folder, name):
    content = DATASETS[name][0]
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_malformed_dataset_names_the_file_and_line(name, tmp_path):
    from mmassist.core.runtime.config import DataConfig, TaskConfig
    from mmassist.core.data import load_examples

    _, kind, line, words = DATASETS[name]
    path = write_dataset(tmp_path, name)
    task = TaskConfig(kind=kind, labels=["negative", "positive"] if kind == "classification" else [])
    with pytest.raises(core.DataFormatError) as info:
        load_examples(path, task, DataConfig())
    assert (info.value.path, info.value.line) == (str(path), line)
    assert str(info.value).startswith(f"{path}:{line}: ")
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["columns.csv", "latin1.tsv", "unknown_label.tsv", "no_label.jsonl"])
def test_finetune_stops_at_a_malformed_dataset_with_its_line(name, host, tmp_path):
    path = write_dataset(tmp_path, name)
    line = DATASETS[name][2]
    with pytest.raises(core.DataFormatError, match=f"{name}:{line}: "):
        core.finetune(text_classifier_config(path), output_dir=tmp_path / "run", host=host)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_cli_finetune_and_eval_report_dataset_errors_in_one_line(checkpoint, tmp_path, capsys):
    path = write_dataset(tmp_path, "latin1.tsv")
    cfg = tmp_path / "cfg.yaml"
    core.FusionConfig.from_dict(text_classifier_config(path)).save(cfg)
    code, _, err = run_cli(["finetune", cfg, "-o", tmp_path / "run"], capsys)
    assert_user_error(code, err, "latin1.tsv:3:", "save the file as UTF-8")
    data = write_dataset(tmp_path, "bad_line.jsonl")
    code, _, err = run_cli(["eval", checkpoint, data], capsys)
    assert_user_error(code, err, "bad_line.jsonl:3:", "invalid JSON")


# -- configs ------------------------------------------------------------------------------------------

CONFIG_ERRORS = [
    ({"training": {"lrr": 1e-3}}, ["unknown config key training.lrr", "known keys here"]),
    ({"fusion": {"projector": {"knd": "mlp"}}}, ["unknown config key fusion.projector.knd"]),
    ({"encoders": {"image": {"name": "image/timm", "confg": {}}}}, ["unknown config key encoders.image.confg"]),
    ({"training": {"batch_size": "big"}}, ["training.batch_size='big' must be a whole number"]),
    ({"training": {"lr": "fast"}}, ["training.lr='fast' must be a number"]),
    ({"training": {"lr": float("nan")}}, ["training.lr=nan", "not NaN"]),
    ({"training": {"lora": {"r": 2.5}}}, ["training.lora.r=2.5 must be a whole number"]),
    ({"encoders": {"image": {"name": "image/timm", "freeze": "yes"}}},
     ["encoders.image.freeze='yes'", "true or false"]),
    ({"task": {"labels": "negative,positive"}}, ["task.labels='negative,positive' must be a list"]),
    ({"task": {"kind": "classification", "labels": []}}, ["task.labels", "at least two labels"]),
    ({"task": {"kind": "summarise"}}, ["task.kind='summarise'", "choose one of"]),
    ({"generation": "greedy"}, ["generation must be a mapping"]),
    ({"decoder": {"init": {"model_type": "llama"}, "tokenizer": "bytes", "max_length": 2}},
     ["decoder.max_length=2 must be >= 8"]),
]


@pytest.mark.parametrize("data,words", CONFIG_ERRORS)
def test_a_bad_config_names_the_key_path(data, words):
    with pytest.raises(core.ConfigError) as info:
        core.FusionConfig.from_dict(data)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_cli_finetune_reports_config_errors_in_one_line(tmp_path, capsys):
    cases = {
        "unknown.yaml": ("training:\n  lrr: 0.001\n", ["unknown config key training.lrr"]),
        "type.yaml": ("training:\n  batch_size: big\n", ["training.batch_size='big' must be a whole number"]),
        "syntax.yaml": ("training:\n  lr: [0.1\n", ["syntax.yaml:", "invalid YAML"]),
        "latin1.yaml": (b"# caf\xe9\ntraining: {}\n", ["latin1.yaml:1:", "save the file as UTF-8"]),
        "big.json": ('{"training": {"lr": ' + "9" * 5000 + "}}", ["big.json", "invalid JSON"]),
        "deep.yaml": ("[" * 50_000, ["deep.yaml", "invalid YAML"]),
    }
    for name, (text, words) in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        code, _, err = run_cli(["finetune", path, "-o", tmp_path / "run"], capsys)
        assert_user_error(code, err, *words)
    good = tmp_path / "good.yaml"
    good.write_text("training:\n  lr: 0.001\n")
    code, _, err = run_cli(["finetune", good, "--set", "training.lora.r=2.5"], capsys)
    assert_user_error(code, err, "training.lora.r=2.5")


def test_a_file_of_another_modality_is_named_as_such(host, media, tmp_path):
    from PIL import Image

    from mmassist.ui.testing import tiny_caption_config

    png = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "red").save(png)
    both = core.Assistant.from_config(tiny_caption_config(None, video=True), host=host)
    with pytest.raises(core.UnsupportedInputError, match=r"photo.png is image .*given as video: pass it as image"):
        both.chat("Describe.", videos=[png])
    image_only = core.Assistant.from_config(tiny_caption_config(None, video=False), host=host)
    clip = media["clip.mp4"]
    with pytest.raises(core.UnsupportedInputError, match=r"is video input .*which this model does not take: "
                                                         r"it was built for image") as info:
        image_only.caption(clip)
    assert "pip install" not in str(info.value)
