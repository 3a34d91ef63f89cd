"""Security of the library: no pickle, no remote code unless asked, no dataset path out of its folder.

The web app's side (bind address, login, upload limits, which files it serves) is in test_app.py;
unsafe zip uploads are refused in tests/test_ui.py (test_uploaded_datasets_are_found_and_unsafe_zips_refused).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from mmassist import core
from mmassist.core.runtime.config import DataConfig, TaskConfig
from mmassist.core.data import load_examples

from .helpers import conversation, jsonl, png_bytes

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "plugins", "fusion", "ui")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def sources() -> list[tuple[Path, ast.Module]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out.append((path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    assert len(out) > 30, "the source tree was not found"
    return out


def dotted(node: ast.AST) -> str:
    """``torch.load`` for the expression ``torch.load``; "" for anything that is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_no_pickle_anywhere_in_the_source_tree():
    problems = []
    for path, tree in sources():
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                             if a.name.split(".")[0] in PICKLE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
                problems.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Call):
                name = dotted(node.func)
                if name.endswith(("torch.load", "torch.save")):
                    if name.endswith("torch.save"):
                        problems.append(f"{where}:{node.lineno}: torch.save (a pickle; use safetensors)")
                    elif not is_true(keyword(node, "weights_only")):
                        problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
                if name.endswith((".read_pickle", ".to_pickle")) or is_true(keyword(node, "allow_pickle")):
                    problems.append(f"{where}:{node.lineno}: {name or 'a call'} reads or writes a pickle")
    assert not problems, "\n".join(problems)


def test_checkpoints_hold_no_pickle_files(checkpoint):
    kinds = {p.suffix for p in checkpoint.iterdir()}
    assert ".safetensors" in kinds and not kinds & {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, kinds


def test_remote_code_runs_only_when_the_config_asks():
    # no call in the source tree switches it on by itself
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and is_true(keyword(node, "trust_remote_code")):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: trust_remote_code=True")
    # every config that has the switch leaves it off by default
    from mmassist.plugins.text import HFTextConfig

    assert core.FusionConfig().decoder.trust_remote_code is False
    assert core.FusionConfig.from_dict({"decoder": {"path": "/models/x"}}).decoder.trust_remote_code is False
    assert HFTextConfig().trust_remote_code is False
    with pytest.raises(core.ConfigError, match="decoder.trust_remote_code='yes'.*true or false"):
        core.FusionConfig.from_dict({"decoder": {"path": "/x", "trust_remote_code": "yes"}})


class _Stop(Exception):
    pass


@pytest.mark.parametrize("asked", [False, True])
def test_the_trust_remote_code_setting_is_what_reaches_transformers(asked, tmp_path, monkeypatch):
    import transformers

    from mmassist.core.runtime.model import build_decoder, build_tokenizer_for
    from mmassist.plugins.text import HFTextConfig, HFTextEncoder

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise _Stop

    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", record)
    cfg = core.FusionConfig.from_dict({"decoder": {"path": str(tmp_path), "trust_remote_code": asked}})
    with pytest.raises(_Stop):
        build_tokenizer_for(cfg)
    with pytest.raises(_Stop):
        build_decoder(cfg, vocab_size=300)
    with pytest.raises(_Stop):
        HFTextEncoder(HFTextConfig(model_path=str(tmp_path), trust_remote_code=asked))
    assert seen == [asked, asked, asked]


# -- dataset paths -----------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path) -> Path:
    (tmp_path / "secret.png").write_bytes(png_bytes())  # outside the data folder
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "red.png").write_bytes(png_bytes())
    (folder / "escape.png").symlink_to(tmp_path / "secret.png")
    return folder


@pytest.mark.parametrize("bad", ["../secret.png", "sub/../../secret.png", "ABSOLUTE", "/etc/passwd", "escape.png",
                                 "file:///etc/passwd", "http://example.com/x.png"])
def test_dataset_media_paths_cannot_leave_the_dataset_folder(data_dir, bad):
    bad = str(data_dir.parent / "secret.png") if bad == "ABSOLUTE" else bad
    path = data_dir / "train.jsonl"
    path.write_text(jsonl([conversation("red.png"), conversation(bad)]))
    with pytest.raises(core.DataFormatError) as info:
        load_examples(path, TaskConfig(kind="vqa"), DataConfig())
    assert info.value.line == 2 and "data folder" in str(info.value), str(info.value)
    captions = data_dir / "captions.jsonl"
    captions.write_text(json.dumps({"file": bad, "caption": "a secret"}) + "\n")
    with pytest.raises(core.DataFormatError, match="data folder"):
        load_examples(data_dir, TaskConfig(kind="caption"), DataConfig())
    captions.unlink()


def test_a_fine_tune_refuses_a_dataset_that_points_outside_its_folder(data_dir, host, tmp_path):
    from .helpers import tiny_config

    path = data_dir / "train.jsonl"
    path.write_text(jsonl([conversation("red.png"), conversation("../secret.png")]))
    cfg = tiny_config(data={"train": str(path), "validation_fraction": 0.0}, training={"max_steps": 1})
    with pytest.raises(core.DataFormatError, match=r"train\.jsonl:2: .*points outside the data folder"):
        core.finetune(cfg, output_dir=tmp_path / "run", host=host)
