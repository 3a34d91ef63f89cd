"""Dataset readers: every format on small files, SST-2 as shipped, splits, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmassist import core
from mmassist.core.runtime.config import DataConfig, TaskConfig
from mmassist.core.data import Example, load_examples, load_splits, resolve_media_path, split_examples
from mmassist.core.errors import ConfigError, DataFormatError

SST2 = Path(__file__).resolve().parents[2] / "shared/data/sst2"
MP4_BYTES = b"\x00\x00\x00\x18ftypmp42" + bytes(64)
WAV_BYTES = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64)

CHAT = TaskConfig(kind="chat")
VQA = TaskConfig(kind="vqa")
CAPTION = TaskConfig(kind="caption")
SENTIMENT = TaskConfig(kind="classification", labels=["negative", "positive"])
DATA = DataConfig()


def _png(path: Path, color="red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _mp4(path: Path) -> Path:
    path.write_bytes(MP4_BYTES)
    return path


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _raises_at(path: Path, line: int, match: str, fn, *args):
    """Call fn(*args) and check it raises DataFormatError naming the file and line."""
    with pytest.raises(DataFormatError, match=match) as info:
        fn(*args)
    assert f"{path}:{line}:" in str(info.value), str(info.value)
    assert info.value.line == line
    return info.value


# -- conversations --------------------------------------------------------------------------------


def test_llava_jsonl(tmp_path):
    _png(tmp_path / "imgs/a.png")
    _png(tmp_path / "imgs/b.png")
    _mp4(tmp_path / "clip.mp4")
    path = _jsonl(tmp_path / "train.jsonl", [
        {"id": "1", "image": "imgs/a.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]},
        {"id": "2", "image": "imgs/a.png",  # no placeholder: LLaVA puts the image first
         "conversations": [{"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."},
                           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "3", "image": ["imgs/a.png", "imgs/b.png"], "video": "clip.mp4",
         "conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "Compare <image> and <image>, then <video>."},
                           {"from": "gpt", "value": "Same."}]},
    ])
    ex = load_examples(path, VQA, DATA)
    assert [e.source for e in ex] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    a, b = (tmp_path / "imgs/a.png").resolve(), (tmp_path / "imgs/b.png").resolve()
    assert ex[0].messages == ({"role": "user", "content": "<image>\nWhat is this?"},
                              {"role": "assistant", "content": "A cat."})
    assert ex[0].media == (("image", a),)
    assert ex[1].messages[0]["content"] == "<image>\nColour?"
    assert ex[1].messages[2]["content"] == "Sure?"
    assert [m["role"] for m in ex[2].messages] == ["system", "user", "assistant"]
    assert ex[2].media == (("image", a), ("image", b), ("video", (tmp_path / "clip.mp4").resolve()))
    assert ex[0].text is None and ex[0].label is None


def test_llava_prepends_video_and_several_images(tmp_path):
    _png(tmp_path / "a.png")
    _mp4(tmp_path / "v.mp4")
    path = _jsonl(tmp_path / "d.jsonl", [{"image": ["a.png", "a.png"], "video": "v.mp4", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    (ex,) = load_examples(path, CHAT, DATA)
    assert ex.messages[0]["content"] == "<image>\n<image>\n<video>\nHi"
    assert [m for m, _ in ex.media] == ["image", "image", "video"]


def test_json_array_gives_record_lines(tmp_path):
    _png(tmp_path / "a.png")
    records = [{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nQ"},
                                                      {"from": "gpt", "value": f"A{i}"}]} for i in range(3)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records, indent=1))
    ex = load_examples(path, VQA, DATA)
    lines = [int(e.source.rsplit(":", 1)[1]) for e in ex]
    text_lines = path.read_text().split("\n")
    assert len(set(lines)) == 3 and all(text_lines[n - 1].strip() == "{" for n in lines)
    # json.dump's one-line output: records are told apart by index
    path.write_text(json.dumps(records))
    assert [e.source for e in load_examples(path, VQA, DATA)] == [f"{path}#0", f"{path}#1", f"{path}#2"]


def test_openai_messages(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", "blue")
    _mp4(tmp_path / "v.mp4")
    path = _jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                   {"type": "text", "text": "and"},
                                                   {"type": "image_url", "image_url": {"url": "b.png"}},
                                                   {"type": "video", "video": "v.mp4"}]},
                      {"role": "assistant", "content": "Two pictures and a clip."}]},
        {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": [
            {"type": "text", "text": "Hi"}]}]},
        # TRL style: parts without paths, files listed beside the messages
        {"images": ["b.png"],
         "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
                      {"role": "assistant", "content": "Blue."}]},
    ])
    ex = load_examples(path, CHAT, DATA)
    # a placeholder followed by text gets a line break, as in a LLaVA-style turn
    assert ex[0].messages[1] == {"role": "user", "content": "<image>\nand<image><video>"}
    assert ex[0].media == (("image", (tmp_path / "a.png").resolve()), ("image", (tmp_path / "b.png").resolve()),
                           ("video", (tmp_path / "v.mp4").resolve()))
    assert ex[1].messages == ({"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"})
    assert ex[1].media == ()
    assert ex[2].messages[0]["content"] == "<image>\n?"
    assert ex[2].media == (("image", (tmp_path / "b.png").resolve()),)


def test_caption_task_also_reads_conversations(tmp_path):
    _png(tmp_path / "a.png")
    path = _jsonl(tmp_path / "c.jsonl", [{"image": "a.png", "conversations": [
        {"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Red."}]}])
    assert load_examples(path, CAPTION, DATA)[0].messages[0]["content"] == "<image>\nDescribe."


# -- captions -----------------------------------------------------------------------------------


def test_captions_folder_jsonl(tmp_path):
    _png(tmp_path / "a.png")
    _mp4(tmp_path / "clip.mp4")
    _jsonl(tmp_path / "captions.jsonl", [{"file": "a.png", "caption": "A red square."},
                                         {"file": "clip.mp4", "caption": "Nothing happens."}])
    ex = load_examples(tmp_path, CAPTION, DATA)
    assert ex[0].messages == ({"role": "user", "content": "<image>\nDescribe this image."},
                              {"role": "assistant", "content": "A red square."})
    assert ex[0].media == (("image", (tmp_path / "a.png").resolve()),)
    assert ex[1].messages[0]["content"] == "<video>\nDescribe this video."
    assert ex[1].media == (("video", (tmp_path / "clip.mp4").resolve()),)
    assert ex[0].source == f"{tmp_path / 'captions.jsonl'}:1"
    # the captions file given directly, and a task prompt
    task = TaskConfig(kind="caption", prompt="What do you see?")
    ex = load_examples(tmp_path / "captions.jsonl", task, DATA)
    assert ex[0].messages[0]["content"] == "<image>\nWhat do you see?"


def test_captions_folder_csv_sniffs_content(tmp_path, host, monkeypatch):
    # the modality comes from the bytes: a PNG named .bin is an image
    _png(tmp_path / "pic.png").rename(tmp_path / "pic.bin")
    (tmp_path / "s.wav").write_bytes(WAV_BYTES)
    (tmp_path / "captions.csv").write_text('file,caption\npic.bin,"Red, square."\ns.wav,A beep.\n')
    # Without a plugin that reads audio, the wav is refused, named with its type and what is read here.
    _raises_at(tmp_path / "captions.csv", 3, r"'s.wav'.*detected type audio/wav.*accepted here: image/timm",
               load_examples, tmp_path, CAPTION, DATA, host)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples" / "mmassist-audio"))
    import mmassist_audio

    with_audio = core.Host(load_entrypoints=False, plugins=[mmassist_audio])
    ex = load_examples(tmp_path, CAPTION, DATA, with_audio)
    assert ex[0].media[0][0] == "image" and ex[0].messages[1]["content"] == "Red, square."
    assert ex[1].media[0][0] == "audio" and ex[1].messages[0]["content"].startswith("<audio>\n")
    assert load_examples(tmp_path / "captions.csv", CAPTION, DATA, with_audio)[1].source.endswith("captions.csv:3")


def test_captions_folder_errors(tmp_path):
    _png(tmp_path / "a.png")
    with pytest.raises(DataFormatError, match="captions.jsonl or captions.csv"):
        load_examples(tmp_path, CAPTION, DATA)
    (tmp_path / "note.txt").write_text("just words")
    path = _jsonl(tmp_path / "captions.jsonl", [{"file": "a.png", "caption": "ok"},
                                                {"file": "note.txt", "caption": "x"}])
    _raises_at(path, 2, r"'note.txt'.*detected type text/plain.*accepted here", load_examples, tmp_path, CAPTION, DATA)
    _jsonl(path, [{"file": "a.png"}])
    _raises_at(path, 1, "caption missing", load_examples, tmp_path, CAPTION, DATA)
    (tmp_path / "captions.csv").write_text("file,caption\n")
    with pytest.raises(DataFormatError, match="keep one"):
        load_examples(tmp_path, CAPTION, DATA)
    path.unlink()
    _raises_at(tmp_path / "captions.csv", 1, "no examples", load_examples, tmp_path, CAPTION, DATA)
    (tmp_path / "captions.csv").write_text("name,text\na.png,x\n")
    _raises_at(tmp_path / "captions.csv", 1, "file and caption", load_examples, tmp_path, CAPTION, DATA)
    (tmp_path / "captions.csv").write_text("file,caption\na.png,ok\na.png,too,many\n")
    _raises_at(tmp_path / "captions.csv", 3, "3 column", load_examples, tmp_path, CAPTION, DATA)
    with pytest.raises(DataFormatError, match="is a folder"):
        load_examples(tmp_path, CHAT, DATA)


# -- classification --------------------------------------------------------------------------------


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 is not at {SST2} (shared/data/sst2)")
def test_sst2_as_shipped():
    train = load_examples(SST2 / "train.tsv", SENTIMENT, DATA)
    dev = load_examples(SST2 / "dev.tsv", SENTIMENT, DATA)
    assert len(train) == 6920 and len(dev) == 872
    assert {e.label for e in train} == {"negative", "positive"}
    assert train[0].label == "positive" and train[1].label == "negative"
    assert train[0].text.startswith("a stirring , funny") and train[0].media == ()
    assert train[-1].source == f"{SST2 / 'train.tsv'}:6920"
    splits = load_splits(DataConfig(train=str(SST2 / "train.tsv"), validation=str(SST2 / "dev.tsv")), SENTIMENT)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [6920, 872, 0]


def test_glue_sst2_with_its_header():
    """GLUE's phrase-level SST-2 (examples/data/sst2_glue): a "sentence<TAB>label" header, 67,349 phrases."""
    glue = Path(__file__).resolve().parents[1] / "examples/data/sst2_glue"
    train = load_examples(glue / "train.tsv", SENTIMENT, DATA)
    dev = load_examples(glue / "dev.tsv", SENTIMENT, DATA)
    assert len(train) == 67349 and len(dev) == 872
    assert (train[0].text.strip(), train[0].label) == ("hide new secretions from the parental units", "negative")
    assert train[0].source.endswith("train.tsv:2")  # line 1 is the header
    assert {e.label for e in dev} == {"negative", "positive"}


def test_headerless_tsv_and_labels(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('a "quoted" word\t1\nbad\t0\n\nworse\tnegative\n')  # quotes are text in TSV
    ex = load_examples(path, SENTIMENT, DATA)
    assert [(e.text, e.label) for e in ex] == [('a "quoted" word', "positive"), ("bad", "negative"),
                                               ("worse", "negative")]
    assert ex[2].source == f"{path}:4"
    path.write_text("fine\t1\nodd\t2\n")
    err = _raises_at(path, 2, "unknown label '2'", load_examples, path, SENTIMENT, DATA)
    assert "negative, positive" in str(err)
    path.write_text("review\tsentiment\nfine\t1\n")
    _raises_at(path, 1, "data.text_column", load_examples, path, SENTIMENT, DATA)


def test_labels_taken_as_strings_without_task_labels(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("fine\t1\nodd\t2\n")
    task = TaskConfig(kind="chat")  # a classification TaskConfig requires labels; the reader allows none
    task.kind = "classification"
    assert [e.label for e in load_examples(path, task, DATA)] == ["1", "2"]


def test_csv_with_header_and_media_column(tmp_path):
    _png(tmp_path / "imgs/cat.png")
    _mp4(tmp_path / "imgs/dog.mp4")
    path = tmp_path / "pets.csv"
    path.write_text('id,image,kind\n1,imgs/cat.png,cat\n2,imgs/dog.mp4,dog\n3,"a cat, drawn",cat\n')
    task = TaskConfig(kind="classification", labels=["cat", "dog"])
    data = DataConfig(text_column="image", label_column="kind")
    ex = load_examples(path, task, data)
    assert ex[0] == Example(f"{path}:2", media=(("image", (tmp_path / "imgs/cat.png").resolve()),), label="cat")
    assert ex[1].media[0][0] == "video" and ex[1].text is None and ex[1].label == "dog"
    assert ex[2].text == "a cat, drawn" and ex[2].media == ()
    path.write_text("id,image,kind\n1,imgs/cat.png,cat\n2,imgs/missing.png,cat\n")
    _raises_at(path, 3, "does not exist", load_examples, path, task, data)
    path.write_text("id,image,kind\n1,imgs/cat.png,cat\n2,imgs/cat.png\n")
    _raises_at(path, 3, "2 column", load_examples, path, task, data)
    path.write_text("id,picture,kind\n1,imgs/cat.png,cat\n")
    err = _raises_at(path, 1, "no column 'image'", load_examples, path, task, data)
    assert "id, picture, kind" in str(err)


def test_classification_jsonl(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"sentence": "great", "label": 1}, {"sentence": "awful", "label": "negative"}])
    ex = load_examples(path, SENTIMENT, DATA)
    assert [(e.text, e.label) for e in ex] == [("great", "positive"), ("awful", "negative")]
    _jsonl(path, [{"sentence": "great", "label": 1}, {"text": "awful", "label": 0}])
    _raises_at(path, 2, "no 'sentence'", load_examples, path, SENTIMENT, DATA)
    _jsonl(path, [{"sentence": "great", "label": 1}, {"sentence": "meh", "label": "neutral"}])
    _raises_at(path, 2, "known labels: negative, positive", load_examples, path, SENTIMENT, DATA)


# -- refusals ----------------------------------------------------------------------------------------


def _conv(image="a.png", human="<image>\nQ?", role="gpt"):
    return {"image": image, "conversations": [{"from": "human", "value": human}, {"from": role, "value": "A."}]}


def test_conversation_errors(tmp_path):
    _png(tmp_path / "a.png")
    path = tmp_path / "d.jsonl"
    good = json.dumps(_conv())
    cases = [
        (good + "\n{not json\n", 2, "invalid JSON"),
        (good + "\n[1, 2]\n", 2, "must be a JSON object"),
        (good + "\n" + json.dumps({"id": 3, "image": "a.png"}) + "\n", 2, "'conversations'.*'messages'"),
        (good + "\n\n" + json.dumps(_conv(role="robot")) + "\n", 3, "unknown role 'robot'.*gpt"),
        (json.dumps(_conv(human="<image> <image> Q?")) + "\n", 1, r"2 <image> placeholder\(s\) but 1 image"),
        (json.dumps(_conv(human="<video> Q?")) + "\n", 1, r"1 <video> placeholder\(s\) but 0 video"),
        (json.dumps({"conversations": [{"from": "human", "value": "Hi"}]}) + "\n", 1, "no assistant turn"),
        (good + "\n" + json.dumps(_conv(image="nope.png")) + "\n", 2, "'nope.png' does not exist"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "audio_clip"}]},
                                  {"role": "assistant", "content": "x"}]}) + "\n", 1, "unknown content part"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "https://example.com/a.png"}}]}, {"role": "assistant", "content": "x"}]}) + "\n", 1, "URLs"),
        ("", 1, "empty"),
        ("\n  \n", 1, "empty"),
    ]
    for text, line, match in cases:
        path.write_text(text)
        _raises_at(path, line, match, load_examples, path, CHAT, DATA)
    array = tmp_path / "d.json"
    array.write_text("[]")
    _raises_at(array, 1, "no examples", load_examples, array, CHAT, DATA)
    array.write_text("[\n  " + json.dumps(_conv()) + ",\n  5\n]")
    _raises_at(array, 3, "record #1: a record must be a JSON object", load_examples, array, CHAT, DATA)
    array.write_text("[\n  " + json.dumps(_conv()) + "\n  {}\n]")
    _raises_at(array, 3, "expected ','", load_examples, array, CHAT, DATA)
    tsv = tmp_path / "d.tsv"
    tsv.write_text("x\t1\n")
    with pytest.raises(DataFormatError, match="JSON or JSONL"):
        load_examples(tsv, VQA, DATA)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl", CHAT, DATA)


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(b"good\t1\nalso good\t0\ncaf\xe9\t1\n")
    _raises_at(path, 3, "not valid UTF-8", load_examples, path, SENTIMENT, DATA)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    _raises_at(path, 2, "UTF-8", load_examples, path, CHAT, DATA)


def test_media_paths_may_not_leave_the_data_folder(tmp_path):
    outside = _png(tmp_path / "outside.png")
    data_dir = tmp_path / "data"
    inside = _png(data_dir / "in.png")
    (data_dir / "link.png").symlink_to(outside)
    (data_dir / "inner_link.png").symlink_to(inside)
    path = data_dir / "d.jsonl"
    for bad in ("../outside.png", str(outside), "link.png", "sub/../../outside.png"):
        _jsonl(path, [_conv(image="in.png"), _conv(image=bad)])
        _raises_at(path, 2, "outside the data folder", load_examples, path, VQA, DATA)
    tsv = data_dir / "d.tsv"
    tsv.write_text("in.png\t1\n../outside.png\t0\n")
    _raises_at(tsv, 2, "outside the data folder", load_examples, tsv, SENTIMENT, DATA)
    (data_dir / "captions.jsonl").write_text(json.dumps({"file": "link.png", "caption": "x"}) + "\n")
    _raises_at(data_dir / "captions.jsonl", 1, "outside", load_examples, data_dir, CAPTION, DATA)
    # inside is fine: relative, absolute, or a symlink to a file inside
    assert resolve_media_path(data_dir, "in.png", "d.jsonl:4") == inside.resolve()
    assert resolve_media_path(data_dir, str(inside), "d.jsonl:4") == inside.resolve()
    assert resolve_media_path(data_dir, "inner_link.png", "d.jsonl:4") == inside.resolve()
    with pytest.raises(DataFormatError, match=r"^d.jsonl:7: .*outside"):
        resolve_media_path(data_dir, "../outside.png", "d.jsonl:7")
    with pytest.raises(DataFormatError, match=r"^d.jsonl:7: .*does not exist"):
        resolve_media_path(data_dir, "gone.png", "d.jsonl:7")


# -- splits ------------------------------------------------------------------------------------------


def _examples(n):
    return [Example(f"f:{i + 1}", text=str(i), label="x") for i in range(n)]


def test_split_is_deterministic_disjoint_and_sized():
    examples = _examples(100)
    train, val, test = split_examples(examples, 0.1, 0.2, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    ids = [e.source for part in (train, val, test) for e in part]
    assert sorted(ids) == sorted(e.source for e in examples) and len(set(ids)) == 100
    assert split_examples(examples, 0.1, 0.2, seed=3) == (train, val, test)
    assert split_examples(examples, 0.1, 0.2, seed=4)[1] != val
    assert train == sorted(train, key=examples.index)  # original order kept
    assert split_examples(examples, 0.0, 0.0, seed=0) == (examples, [], [])
    assert [len(p) for p in split_examples(_examples(5), 0.01, 0.0, seed=0)] == [4, 1, 0]  # at least one
    with pytest.raises(DataFormatError, match="too few"):
        split_examples(_examples(1), 0.1, 0.0, seed=0)
    with pytest.raises(ConfigError, match="nothing to train on"):
        split_examples(examples, 0.6, 0.5, seed=0)


def test_load_splits_carves_from_train(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("".join(f"sentence {i}\t{i % 2}\n" for i in range(50)))
    data = DataConfig(train=str(path), validation_fraction=0.2, test_fraction=0.1, seed=7)
    splits = load_splits(data, SENTIMENT)
    assert {k: len(v) for k, v in splits.items()} == {"train": 35, "validation": 10, "test": 5}
    assert load_splits(data, SENTIMENT) == splits
    dev = tmp_path / "dev.tsv"
    dev.write_text("held out\t1\n")
    splits = load_splits(DataConfig(train=str(path), validation=str(dev), test_fraction=0.0), SENTIMENT)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [50, 1, 0]
    with pytest.raises(ConfigError, match="data.train"):
        load_splits(DataConfig(), SENTIMENT)
