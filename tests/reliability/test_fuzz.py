"""Fuzzing the dataset readers and the config loader: whatever the bytes or the dict, the only
exception that may come out is an MMAssistError (a DataFormatError or a ConfigError) with a message.

Each property runs a modest number of examples so the suite stays fast; hypothesis keeps the
failures it finds in .hypothesis/ and replays them first on the next run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmassist import core
from mmassist.core.runtime.config import DataConfig, FusionConfig, TaskConfig
from mmassist.core.data import load_examples

from .helpers import png_bytes, tiny_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TASKS = [TaskConfig(kind="chat"), TaskConfig(kind="vqa"), TaskConfig(kind="caption", prompt="Describe."),
         TaskConfig(kind="classification", labels=["negative", "positive"])]
TASKS.append(TaskConfig(kind="chat"))  # a classification task without labels: the reader takes any label
TASKS[-1].kind = "classification"
DATA = [DataConfig(), DataConfig(text_column="text", label_column="y")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A data folder with one real image in it (so generated media paths sometimes resolve) and a
    file outside it (so some escape it)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside.png").write_bytes(png_bytes())
    data = root / "data"
    data.mkdir()
    (data / "red.png").write_bytes(png_bytes())
    (data / "notes.png").write_text("not a picture")
    return data


def load(path: Path, task: TaskConfig, data: DataConfig) -> None:
    try:
        examples = load_examples(path, task, data)
    except core.MMAssistError as e:
        assert str(e).strip(), "an error without a message"
        return
    assert examples, "load_examples returned no examples without an error"


# -- dataset readers ----------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".txt", ""]),
       task=st.sampled_from(TASKS), columns=st.sampled_from(DATA))
def test_random_bytes_never_escape_as_anything_but_a_data_format_error(folder, data, suffix, task, columns):
    path = folder / f"random{suffix}"
    path.write_bytes(data)
    load(path, task, columns)


# Text built from the characters and words the readers care about, so the fuzzer gets past the
# first check more often than with uniform bytes.
TOKENS = ["{", "}", "[", "]", ",", ":", '"', "\\", "\n", "\r\n", "\t", " ", "\ufeff", "\x00", "é", "\ud7ff",
          "null", "true", "1", "0", "-1", "1e999", "0.5", '"conversations"', '"messages"', '"from"', '"value"',
          '"role"', '"content"', '"human"', '"gpt"', '"user"', '"assistant"', '"image"', '"images"', '"video"',
          '"type"', '"text"', '"image_url"', '"url"', '"file"', '"caption"', '"sentence"', '"label"',
          '"<image>"', '"red.png"', '"notes.png"', '"../outside.png"', '"/etc/passwd"', '"http://x/y.png"',
          "sentence", "label", "file", "caption", "red.png", "negative", "positive", "<image>", "<video>",
          '"a\\u0000.png"', "[" * 3000, "9" * 5000]  # nesting and a number past what Python's reader takes


@FUZZ
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=60),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]), task=st.sampled_from(TASKS),
       columns=st.sampled_from(DATA))
def test_near_miss_files_never_escape_as_anything_but_a_data_format_error(folder, tokens, suffix, task, columns):
    path = folder / f"tokens{suffix}"
    path.write_text("".join(tokens), encoding="utf-8", errors="surrogatepass")
    load(path, task, columns)


def json_values(keys=st.sampled_from(["conversations", "messages", "from", "value", "role", "content", "image",
                                      "images", "video", "type", "text", "image_url", "url", "file", "caption",
                                      "sentence", "label", "path"]) | st.text(max_size=8)):
    leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
              | st.sampled_from(["human", "gpt", "user", "assistant", "system", "image", "text", "red.png",
                                 "notes.png", "../outside.png", "/etc/passwd", "<image>\nhi", "hi", "",
                                 "a\x00.png", "x" * 300 + ".png",
                                 "positive", "0", "1", "http://x/y.png"])
              | st.text(max_size=20))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                        max_leaves=25)


@FUZZ
@given(records=st.lists(json_values(), min_size=1, max_size=6), as_array=st.booleans(),
       task=st.sampled_from(TASKS), columns=st.sampled_from(DATA))
def test_random_json_records_never_escape_as_anything_but_a_data_format_error(folder, records, as_array, task,
                                                                             columns):
    path = folder / ("records.json" if as_array else "records.jsonl")
    text = json.dumps(records, indent=1) if as_array else "\n".join(json.dumps(r) for r in records)
    path.write_text(text, encoding="utf-8")
    load(path, task, columns)


CELLS = st.sampled_from(["red.png", "notes.png", "../outside.png", "/etc/passwd", "a\x00.png", "x" * 300 + ".png",
                         "great film", "", " ", "positive", "negative", "0", "1", "2", "sentence", "label",
                         "text", "y", "file", "caption", '"', "a,b", "a\tb", "line\nbreak"]) | st.text(max_size=12)


LABELS = st.sampled_from(["positive", "negative", "0", "1", "2", "", "label"]) | CELLS
ROWS = (st.lists(st.lists(CELLS, min_size=0, max_size=4), min_size=1, max_size=8)
        | st.lists(st.tuples(CELLS, LABELS).map(list), min_size=1, max_size=8)  # text, label: SST-2's shape
        | st.lists(st.tuples(CELLS, LABELS).map(list), min_size=1, max_size=8).map(
            lambda rows: [["sentence", "label"]] + rows)
        | st.lists(st.tuples(CELLS, CELLS).map(list), min_size=1, max_size=8).map(
            lambda rows: [["file", "caption"]] + rows))


@FUZZ
@given(rows=ROWS,
       delimiter=st.sampled_from([",", "\t"]), quote=st.booleans(), task=st.sampled_from(TASKS),
       columns=st.sampled_from(DATA))
def test_random_tables_never_escape_as_anything_but_a_data_format_error(folder, rows, delimiter, quote, task,
                                                                       columns):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL).writerows(rows)
    path = folder / ("table.csv" if delimiter == "," else "table.tsv")
    path.write_text(buf.getvalue(), encoding="utf-8", errors="surrogatepass")
    load(path, task, columns)
    if task.kind == "caption":  # the same table as a captions folder
        (folder / "captions.csv").write_text(buf.getvalue(), encoding="utf-8", errors="surrogatepass")
        try:
            load(folder, task, columns)
        finally:
            (folder / "captions.csv").unlink()


def test_pathological_json_found_while_fuzzing_is_a_data_format_error(folder):
    """Valid JSON that Python's reader refuses, and paths the file system refuses: each used to
    escape as a ValueError, RecursionError or OSError."""
    chat, sentiment = TASKS[0], TASKS[3]
    cases = [
        ("deep.jsonl", "[" * 100_000, chat, "nested too deeply"),
        ("deep.json", "[" * 100_000, chat, "nested too deeply"),
        ("digits.jsonl", '{"sentence": "hi", "label": ' + "1" * 5000 + "}", sentiment, "4300 digits"),
        ("digits.json", "[" + "1" * 5000 + "]", chat, "4300 digits"),
        ("nul.tsv", "a\x00.png\t1\n", sentiment, "not a usable file name"),
        ("long.tsv", "x" * 300 + ".png\t1\n", sentiment, "not a usable file name"),
        ("nul.jsonl", json.dumps({"image": "a\x00.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}), chat, "not a usable file name"),
    ]
    for name, text, task, words in cases:
        path = folder / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(core.DataFormatError, match=words) as info:
            load_examples(path, task, DATA[0])
        assert info.value.path == str(path) and info.value.line == 1


# -- the config loader ---------------------------------------------------------------------------


def config_paths(cls: type, prefix: tuple = ()) -> list[tuple[str, ...]]:
    """Every key path of a config dataclass tree: ("training", "lora", "r")..."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        out.append(path)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(config_paths(hints[f.name], path))
    return out


PATHS = config_paths(FusionConfig)
KEYS = sorted({p[-1] for p in PATHS})
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**310)
    | st.floats() | st.text(max_size=10)
    | st.sampled_from(["image/timm", "video/decord", "text/hf", "llama", "bytes", "mlp", "resampler", "chat",
                       "classification", "cosine", "auto", "image", "video", "Image", "a.b", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6)
                                                               | st.integers() | st.none(), inner, max_size=4),
    max_leaves=12)


def build_config(data) -> None:
    try:
        cfg = FusionConfig.from_dict(data)
    except core.ConfigError as e:
        assert str(e).strip()
        return
    # what was accepted is a valid config: it round-trips
    assert FusionConfig.from_dict(json.loads(cfg.to_json())) == cfg or _has_nan(cfg.to_dict())


def _has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


@FUZZ
@given(data=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers() | st.none(), VALUES,
                            max_size=6))
def test_random_nested_dicts_give_a_config_or_a_config_error(data):
    build_config(data)


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_a_valid_config_with_random_values_gives_a_config_or_a_config_error(changes):
    data = json.loads(json.dumps(tiny_config()))
    data["task"] = {"kind": "chat"}
    for path, value in changes:
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    build_config(data)


YAML_TOKENS = ["training:", "\n", "  ", "lr: ", "1e-3", "[", "]", "{", "}", ":", "- ", "&a ", "*a",
               "!!python/object:os.system", "decoder:", "init:", "model_type: llama", "tokenizer: bytes", "'", '"',
               "#", "\t", "1" * 40, "[" * 300, "9" * 5000]  # deeper nesting: see test_bad_input.py


@FUZZ
@given(text=st.text(max_size=300) | st.lists(st.sampled_from(YAML_TOKENS), max_size=30).map("".join),
       suffix=st.sampled_from([".yaml", ".json"]))
def test_random_config_files_give_a_config_or_a_config_error(tmp_path_factory, text, suffix):
    path = tmp_path_factory.getbasetemp() / f"fuzz-config{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        FusionConfig.from_file(path)
    except core.ConfigError as e:
        assert str(e).strip()


def test_config_values_found_while_fuzzing_are_config_errors():
    """Each of these used to escape as a TypeError, OverflowError or ValueError, or (NaN) to pass."""
    cases = [
        ({1: "a", "training": {}}, "unknown config key 1"),  # keys of mixed types could not be sorted
        ({None: 1, "x": 2}, "None"),
        ({"training": {"lr": 10**400}}, "training.lr: a whole number of about 401 digits is too large"),
        ({"training": {"epochs": 10**5000}}, "too large"),
        ({"task": {"kind": 10**5000}}, "too large"),
        ({"task": {"kind": [10**5000]}}, "too large to show"),
        ({"training": {"lr": float("nan")}}, "not NaN"),
        ({"training": {"betas": [float("nan"), 0.9]}}, "training.betas"),
        ({"fusion": {"modality_projectors": {10**5000: {}}}}, "must be a string"),
        ({"encoders": {1: {"name": "image/timm"}}}, "encoders: the key 1 must be a string"),
    ]
    for data, words in cases:
        with pytest.raises(core.ConfigError) as info:
            FusionConfig.from_dict(data)
        assert words in str(info.value), str(info.value)
