"""Token classification (named entities): CoNLL and JSONL data, the first-piece label alignment, the
entity-level report, fine-tuning a tiny tagger and tagging with it from Python and the command line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmassist import core
from mmassist.core.data import load_examples
from mmassist.core.runtime.config import DataConfig, TaskConfig
from mmassist.core.runtime.tags import entity_spans, sort_tags, split_words
from mmassist.core.training.metrics import entity_report

ROOT = Path(__file__).resolve().parents[1]
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
NER = TaskConfig(kind="token_classification")

PEOPLE = ["Alice", "Bob", "Carmen", "Dmitri", "Erik", "Fatima"]
PLACES = ["Paris", "Lagos", "Oslo", "Lima", "Kyoto", "Quebec"]
COMPANIES = [["Acme", "Corp"], ["Globex"], ["Initech", "Systems"], ["Umbrella", "Group"]]
FRAMES = [("{p} flew to {l} .", ), ("{p} works for {o} in {l} .",), ("In {l} , {p} met {q} .",),
          ("{o} hired {p} last year .",), ("the weather in {l} was mild .",)]


def sentences(n: int, seed: int, scheme: str = "BIO") -> list[tuple[list[str], list[str]]]:
    """Generated sentences with people, places and companies, tagged in the BIO or IO scheme."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        frame = rng.choice(FRAMES)[0]
        fill = {"p": [rng.choice(PEOPLE)], "q": [rng.choice(PEOPLE)], "l": [rng.choice(PLACES)],
                "o": rng.choice(COMPANIES)}
        kinds = {"p": "PER", "q": "PER", "l": "LOC", "o": "ORG"}
        words, tags = [], []
        for piece in frame.split():
            if piece.startswith("{"):
                key = piece[1]
                for i, w in enumerate(fill[key]):
                    words.append(w)
                    tags.append(("B-" if i == 0 and scheme == "BIO" else "I-") + kinds[key])
            else:
                words.append(piece)
                tags.append("O")
        out.append((words, tags))
    return out


def write_conll(path: Path, data, docstart: bool = True) -> Path:
    lines = ["-DOCSTART- O", ""] if docstart else []
    for words, tags in data:
        lines += [f"{w} {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def tagger_cfg(train: Path, dev: Path, **training) -> dict:
    return {
        "encoders": {"text": {"name": "text/hf", "config": {
            "max_length": 48, "init_config": {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 128}}}},
        "decoder": {"init": TINY_LLAMA, "tokenizer": "bytes", "max_length": 128},
        "task": {"kind": "token_classification", "prompt": "Tag the named entities."},
        "data": {"train": str(train), "validation": str(dev), "test": str(dev)},
        "training": {"epochs": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 20, "log_every": 5, **training},
    }


# -- tags and the report --------------------------------------------------------------------------


def test_entities_are_read_from_io_and_bio_tags_as_seqeval_reads_them():
    assert entity_spans(["I-PER", "I-PER", "O", "I-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]  # IO: runs
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]  # BIO: B starts one
    assert entity_spans(["I-PER", "I-LOC", "B-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2), ("LOC", 2, 3)]
    assert entity_spans(["O", "I-ORG"]) == [("ORG", 1, 2)]  # I- after O starts one (conlleval)
    assert entity_spans([]) == [] and entity_spans(["O"]) == []
    assert sort_tags({"I-PER", "O", "B-LOC", "B-PER", "I-LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_the_entity_report_counts_an_entity_only_with_its_span_and_type():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "O"]]  # a cut span, a right one, a wrong type
    r = entity_report(true, pred)
    assert r["entities"] == 3 and r["n"] == 2
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3) and r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["LOC"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert r["per_class"]["PER"]["f1"] == 0.0 and r["per_class"]["ORG"]["support"] == 1
    assert entity_report([["O"]], [["O"]])["f1"] == 0.0  # nothing to find: 0, as zero_division=0
    with pytest.raises(ValueError, match="sentence 0"):
        entity_report([["O", "O"]], [["O"]])


def test_text_is_split_into_words_with_offsets():
    text = "Dr. Jean-Luc Picard visited Paris, France."
    words = split_words(text)
    assert [w for w, _, _ in words] == ["Dr", ".", "Jean-Luc", "Picard", "visited", "Paris", ",", "France", "."]
    assert all(text[a:b] == w for w, a, b in words)


# -- data ---------------------------------------------------------------------------------------


def test_conll_files_are_read_sentence_by_sentence_with_their_lines(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
                    "Blackburn NNP I-NP I-PER\n\n\n-DOCSTART- O\nOslo I-LOC\n", encoding="utf-8")
    examples = load_examples(path, NER, DataConfig())
    assert [e.words for e in examples] == [("EU", "rejects"), ("Peter", "Blackburn"), ("Oslo",)]
    assert [e.tags for e in examples] == [("B-ORG", "O"), ("B-PER", "I-PER"), ("I-LOC",)]
    assert [e.source.rsplit(":", 1)[1] for e in examples] == ["3", "6", "11"]
    path.write_text("Paris I-LOC\nis O\nlovely\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match=r"train.conll:3: expected a word and its tag"):
        load_examples(path, NER, DataConfig())
    path.write_text("Paris I-LOC\n\nis X-LOC\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match=r"train.conll:3: 'X-LOC' is not a tag"):
        load_examples(path, NER, DataConfig())
    path.write_text("Paris I-LOC\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match=r"train.conll:1: unknown tag 'I-LOC'; task.labels: O, B-PER"):
        load_examples(path, TaskConfig(kind="token_classification", labels=["O", "B-PER"]), DataConfig())
    path.write_text("-DOCSTART- O\n\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match="holds no examples"):
        load_examples(path, NER, DataConfig())


def test_jsonl_records_give_tokens_and_tags_or_tag_indices(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text(json.dumps({"tokens": ["Ada", "wrote"], "tags": ["B-PER", "O"]}) + "\n"
                    + json.dumps({"tokens": ["Rome"], "ner_tags": [2]}) + "\n", encoding="utf-8")
    labelled = TaskConfig(kind="token_classification", labels=["O", "B-PER", "B-LOC"])
    assert [e.tags for e in load_examples(path, labelled, DataConfig())] == [("B-PER", "O"), ("B-LOC",)]
    with pytest.raises(core.DataFormatError, match=r"ner.jsonl:2: tag 0 is the index 2.*set task.labels"):
        load_examples(path, NER, DataConfig())
    path.write_text("\n" + json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match=r"ner.jsonl:2: 2 tokens but 1 tags"):
        load_examples(path, NER, DataConfig())
    path.write_text(json.dumps({"words": ["a"], "labels": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match=r"ner.jsonl:1: .*'tokens' and 'tags'.*its keys: words, labels"):
        load_examples(path, NER, DataConfig())
    path.write_text(json.dumps({"tokens": ["a", ""], "tags": ["O", "O"]}) + "\n", encoding="utf-8")
    with pytest.raises(core.DataFormatError, match=r"ner.jsonl:1: token 1 is \"\""):
        load_examples(path, NER, DataConfig())


def test_a_words_first_piece_carries_its_tag_and_the_other_pieces_none(host):
    from mmassist.core.runtime.processor import Processor
    from mmassist.plugins.text import HFTextConfig, HFTextEncoder

    encoder = HFTextEncoder(HFTextConfig(max_length=16, init_config={
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64}))
    from mmassist.core.runtime.tokenizer import build_tokenizer

    processor = Processor(build_tokenizer(placeholders=["<text>"]), {"text": encoder}, 64)
    words = ["Ouagadougou", "is", "far"]  # MiniLM's tokenizer splits the city into several pieces
    pieces = encoder.tokenizer.tokenize(words[0])
    assert len(pieces) > 1
    batch = processor.collate([processor.encode_words("Tag:", words, [2, 0, 0]),
                               processor.encode_words("Tag:", ["far"], [0])])
    # [CLS] Ouag ##ado... is far [SEP]: the tag on the first piece, -100 on the others and on [CLS]/[SEP]/padding
    first = [-100, 2] + [-100] * (len(pieces) - 1) + [0, 0, -100]
    assert batch.token_labels[0].tolist() == first
    assert batch.word_index[0].tolist() == [-1, 0] + [-1] * (len(pieces) - 1) + [1, 2, -1]
    assert batch.word_index[1].tolist()[:3] == [-1, 0, -1] and batch.token_labels[1].tolist()[2:] == \
        [-100] * (len(first) - 2)
    with pytest.raises(core.UnsupportedInputError, match="non-empty string"):
        processor.encode_words("Tag:", ["two words"])


# -- fine-tuning and tagging ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagger(host, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner")
    train = write_conll(folder / "train.conll", sentences(160, seed=1, scheme="IO"))
    dev = write_conll(folder / "dev.conll", sentences(30, seed=2, scheme="IO"), docstart=False)
    torch.manual_seed(0)
    res = core.finetune(tagger_cfg(train, dev), output_dir=folder / "run", host=host)
    return res, folder


def test_a_tagger_learns_entities_and_reports_them_per_type(tagger):
    res, folder = tagger
    test = res.metrics["test"]
    assert set(test["per_class"]) == {"PER", "LOC", "ORG"}
    assert test["f1"] >= 0.9, test
    assert res.metrics["best_step"] is not None and "f1_best" in res.metrics
    report = json.loads((res.output_dir / "final_metrics.json").read_text())
    assert report["test"]["per_class"]["ORG"]["support"] == test["per_class"]["ORG"]["support"] > 0
    cfg = json.loads((res.output_dir / "config.json").read_text())
    assert cfg["task"]["labels"] == ["O", "I-LOC", "I-ORG", "I-PER"]  # the data's tags, O first


def test_a_saved_tagger_tags_words_and_finds_entities_in_text(tagger, host):
    res, _ = tagger
    asst = core.Assistant.from_pretrained(res.output_dir, host=host)
    assert asst.tag(["Carmen", "flew", "to", "Oslo", "."]) == ["I-PER", "O", "O", "I-LOC", "O"]
    text = "Erik works for Initech Systems in Lima."
    assert asst.tag(text) == [{"entity": "PER", "text": "Erik", "start": 0, "end": 4},
                              {"entity": "ORG", "text": "Initech Systems", "start": 15, "end": 30},
                              {"entity": "LOC", "text": "Lima", "start": 34, "end": 38}]
    assert asst.tag("") == [] and asst.tag([]) == []
    # A sentence longer than the text encoder reads (max_length 48) is tagged in parts, every word tagged.
    long = ["Bob", "flew", "to", "Kyoto", "."] * 12
    tags = asst.tag(long)
    assert len(tags) == len(long) and tags[-5:] == ["I-PER", "O", "O", "I-LOC", "O"]
    with pytest.raises(core.UnsupportedInputError, match="text or a list of words"):
        asst.tag(42)
    with pytest.raises(core.ConfigError, match="not classification; use tag"):
        asst.classify("Bob")


def test_a_resumed_or_reloaded_run_keeps_the_tags_it_found(tagger, host, tmp_path):
    res, folder = tagger
    ckpt = sorted((res.output_dir / "checkpoints").glob("step-*"))[-1]
    cfg = tagger_cfg(folder / "train.conll", folder / "dev.conll")  # no labels: found in the data again
    again = core.finetune(cfg, output_dir=res.output_dir, host=host, resume_from=ckpt)
    assert again.metrics["steps"] == res.metrics["steps"]


def test_the_cli_tags_a_text(tagger):
    res, _ = tagger
    env = dict(os.environ, MMASSIST_NO_PLUGINS="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "mmassist.core", "tag", str(res.output_dir),
                          "In Quebec , Fatima met Bob ."], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["LOC\tQuebec\t3-9", "PER\tFatima\t12-18", "PER\tBob\t23-26"]
    run = subprocess.run([sys.executable, "-m", "mmassist.core", "tag", str(res.output_dir), "--json",
                          "--words", "Bob", "flew", "to", "Lima"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == ["I-PER", "O", "O", "I-LOC"]


def test_token_classification_needs_a_text_encoder(tmp_path, host):
    train = write_conll(tmp_path / "t.conll", sentences(4, seed=0))
    cfg = tagger_cfg(train, train)
    cfg["encoders"] = {"image": {"name": "image/timm", "config": {"model_name": "test_vit", "image_size": 32}}}
    with pytest.raises(core.ConfigError, match="add encoders.text"):
        core.finetune(cfg, output_dir=tmp_path / "run", host=host)
    only_o = write_conll(tmp_path / "o.conll", [(["nothing", "here"], ["O", "O"])])
    with pytest.raises(core.DataFormatError, match="every word of the data is tagged O"):
        core.finetune(tagger_cfg(only_o, only_o), output_dir=tmp_path / "run", host=host)


def test_the_web_app_highlights_entities_and_chat_lists_them(tagger, host, tmp_path):
    from gradio_client import Client

    from mmassist.ui.app import build_app
    from mmassist.ui.templates import template
    from mmassist.ui.testing import serve

    res, _ = tagger
    app = build_app(str(res.output_dir), host=host, runs_dir=tmp_path / "runs")
    with serve(app) as url:
        client = Client(url, verbose=False)
        shown = client.predict("Dmitri flew to Lima .", "", api_name="/tag")  # HighlightedText's value
        assert [(p["token"], p["class_or_confidence"]) for p in shown if p["token"]] == \
            [("Dmitri", "PER"), (" flew to ", None), ("Lima", "LOC"), (" .", None)]
        answer = client.predict({"text": "Bob flew to Oslo .", "files": []}, "", 0.0, 1.0, 16, api_name="/chat")
        assert answer == "**Bob** (PER), **Oslo** (LOC)"
        with pytest.raises(Exception, match="the text is empty"):
            client.predict("  ", "", api_name="/tag")
        with pytest.raises(Exception, match="not to find entities"):
            client.predict("Bob", "starter", api_name="/tag")
    assert template("token_classification")["task"]["kind"] == "token_classification"


def test_word_shapes_give_an_uncased_encoder_the_capitals_back():
    from mmassist.plugins.text import SHAPES, HFTextConfig, HFTextEncoder, word_shape

    assert [SHAPES[word_shape(w)] for w in ("paris", "Paris", "NATO", "iPhone", "1990", ",", "Paris,", "A")] == \
        ["lower", "capitalised", "upper", "mixed", "digits", "punctuation", "capitalised", "capitalised"]
    tiny = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64}
    torch.manual_seed(0)
    shaped = HFTextEncoder(HFTextConfig(max_length=16, init_config=tiny, word_shapes=True)).eval()
    plain = HFTextEncoder(HFTextConfig(max_length=16, init_config=tiny)).eval()
    plain.model.load_state_dict(shaped.model.state_dict())
    batch, word_ids = shaped.preprocess_words([["Paris", "is", "NICE"], ["paris"]])
    assert batch["shape_ids"][0].tolist()[:5] == [0, 2, 1, 3, 0] and batch["shape_ids"][1].tolist()[1] == 1
    # The uncased tokenizer makes "Paris" and "paris" the same ids; only the shapes tell them apart.
    assert batch["input_ids"][0, 1] == batch["input_ids"][1, 1]
    same = plain(**{k: v for k, v in batch.items() if k != "shape_ids"}).features
    torch.testing.assert_close(shaped(**batch).features, same)  # zero at first: the pretrained features
    with torch.no_grad():
        shaped.shape_embedding.weight.normal_()
    out = shaped(**batch).features
    assert not torch.allclose(out[0, 1], out[1, 1])  # once learned, "Paris" and "paris" differ
    # Plain text gets each token the shape of the word it lies in ("Oslo." is capitalised, its "." too).
    text = shaped.preprocess([core.Media.of("the EU met in Oslo.")])
    assert text["shape_ids"][0].tolist() == [0, 1, 3, 1, 1, 2, 2, 0]


def test_the_wikigold_example_reads_as_shipped():
    cfg = core.FusionConfig.from_file(ROOT / "examples" / "configs" / "ner_wikigold.yaml")
    train = load_examples(cfg.data.train, cfg.task, cfg.data)
    dev = load_examples(cfg.data.validation, cfg.task, cfg.data)
    assert (len(train), len(dev)) == (1202, 113)
    assert sum(len(e.words) for e in train) == 28228
    assert sort_tags({t for e in train for t in e.tags}) == ["O", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    assert train[0].words[:3] == ("010", "is", "the") and train[0].tags[:2] == ("I-MISC", "O")
