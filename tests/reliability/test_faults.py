"""Faults: a checkpoint write that fails midway, plugins that fail at import, registration or build,
a checkpoint whose plugin is not installed, and a run killed mid-training.

Where a fault is covered elsewhere, the test here is a thin pointer to it:
- plugins that fail to import or register, installed as real distributions with entry points:
  tests/test_third_party_plugin.py (test_host_survives_broken_plugins, test_broken_plugin_is_recorded);
  registered as objects: tests/test_host.py (test_broken_plugins_are_isolated_and_reported);
- a fine-tune killed with SIGKILL and resumed to the same weights:
  tests/test_finetune.py (test_a_run_killed_with_sigkill_resumes_to_the_same_weights).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmassist import core
from mmassist.core.runtime import checkpoint
from mmassist.core.contract.encoders import EncoderSpec
from mmassist.plugins.image import TimmImageConfig

from .helpers import assert_user_error, conversation, jsonl, run_cli, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def weights(asst: core.Assistant) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in asst.model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def saved(checkpoint, tmp_path):
    """A copy of the tiny checkpoint, to save another model over."""
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}"))


# -- checkpoints ---------------------------------------------------------------------------------


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_loadable(saved, host, monkeypatch):
    import safetensors.torch

    before = weights(core.Assistant.from_pretrained(saved, host=host))
    torch.manual_seed(1)
    newer = core.Assistant.from_config(tiny_config(), host=host)
    real_save = safetensors.torch.save_file

    def disk_full(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:  # half of the file made it to disk
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        newer.save_pretrained(saved)
    monkeypatch.undo()
    assert_same_weights(weights(core.Assistant.from_pretrained(saved, host=host)), before)
    assert leftovers(saved) == [], "the half-written temporary folder was left behind"


def test_a_failure_while_swapping_folders_leaves_the_previous_checkpoint_loadable(saved, host, monkeypatch):
    before = weights(core.Assistant.from_pretrained(saved, host=host))
    torch.manual_seed(2)
    newer = core.Assistant.from_config(tiny_config(), host=host)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new folder into place, after the old one was moved aside
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        newer.save_pretrained(saved)
    monkeypatch.undo()
    assert calls[0] == ("model", ".model.old"), calls
    assert_same_weights(weights(core.Assistant.from_pretrained(saved, host=host)), before)
    assert leftovers(saved) == []


def test_a_kill_between_the_two_renames_loses_no_checkpoint(saved, host, monkeypatch):
    """SIGKILL after the previous checkpoint was moved aside and before the new one was renamed in:
    only ``.model.old`` is left. Loading puts it back; the next save replaces it as usual."""
    before = weights(core.Assistant.from_pretrained(saved, host=host))
    torch.manual_seed(3)
    newer = core.Assistant.from_config(tiny_config(), host=host)
    real_replace = os.replace

    class Killed(BaseException):  # not caught by save_checkpoint's clean-up, like a kill
        pass

    def killed_after_first(src, dst):
        real_replace(src, dst)
        if Path(dst).name == ".model.old":
            raise Killed

    monkeypatch.setattr(os, "replace", killed_after_first)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: None)  # a kill cleans nothing up
    with pytest.raises(Killed):
        newer.save_pretrained(saved)
    monkeypatch.undo()
    assert not saved.exists() and (saved.parent / ".model.old" / "model.safetensors").is_file()
    assert_same_weights(weights(core.Assistant.from_pretrained(saved, host=host)), before)
    assert saved.is_dir() and ".model.old" not in leftovers(saved)
    newer.save_pretrained(saved)
    assert_same_weights(weights(core.Assistant.from_pretrained(saved, host=host)), weights(newer))
    assert ".model.old" not in leftovers(saved)


def test_a_failed_first_write_leaves_no_folder_that_looks_like_a_checkpoint(host, tmp_path, monkeypatch):
    asst = core.Assistant.from_config(tiny_config(), host=host)

    def broken_tokenizer_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(asst.tokenizer, "save_pretrained", broken_tokenizer_save)
    with pytest.raises(OSError):
        asst.save_pretrained(tmp_path / "first")
    assert not (tmp_path / "first").exists() and leftovers(tmp_path / "first") == []
    with pytest.raises(core.ConfigError, match="is not a mmassist checkpoint"):
        core.Assistant.from_pretrained(tmp_path / "first", host=host)


def test_a_kill_mid_training_is_covered_by_the_sigkill_resume_test():
    """Killing ``mmassist finetune`` with SIGKILL and resuming gives the same weights as an unbroken
    run: tests/test_finetune.py runs it (two fine-tunes in subprocesses, too slow to repeat here)."""
    source = (ROOT / "tests" / "test_finetune.py").read_text()
    assert "def test_a_run_killed_with_sigkill_resumes_to_the_same_weights" in source
    assert "signal.SIGKILL" in source and "--resume-from" in source


# -- plugins -----------------------------------------------------------------------------------------


class BrokenBuildPlugin:
    """Registers image/broken, whose encoder raises when it is built (say, corrupt weights)."""

    __name__ = "broken-build"

    @core.hookimpl
    def register_encoders(self, register):
        def build(cfg):
            raise RuntimeError("its weights file is corrupt")

        register(EncoderSpec(name="image/broken", modality="image", mime_types=("image/png",),
                             config_cls=TimmImageConfig, build=build))


class BrokenRegisterPlugin:
    __name__ = "broken-register"

    @core.hookimpl
    def register_encoders(self, register):
        raise RuntimeError("broken on purpose in register_encoders")


def broken_build_config() -> dict:
    cfg = tiny_config()
    cfg["encoders"] = {"image": {"name": "image/broken"}}
    return cfg


def test_an_encoder_that_raises_when_built_is_a_plugin_error_naming_the_plugin(tmp_path):
    host = core.Host(load_entrypoints=False, plugins=[BrokenBuildPlugin(), BrokenRegisterPlugin()])
    assert "image/broken" in host.encoders.names()
    assert [f.name for f in host.failed_plugins] == ["broken-register"]  # isolated and reported
    with pytest.raises(core.PluginError) as info:
        core.Assistant.from_config(broken_build_config(), host=host)
    message = str(info.value)
    for word in ("image/broken", "broken-build", "failed to build", "RuntimeError", "its weights file is corrupt"):
        assert word in message, message
    train = tmp_path / "train.jsonl"
    train.write_text(jsonl([conversation(None)] * 4))
    cfg = {**broken_build_config(), "data": {"train": str(train), "validation_fraction": 0.0}}
    with pytest.raises(core.PluginError, match="image/broken.*failed to build"):
        core.finetune(cfg, output_dir=tmp_path / "run", host=host)
    # the host and its other encoders keep working
    assert isinstance(core.Assistant.from_config(tiny_config(), host=host).chat("hi"), str)


def fake_entry_points(plugins: dict[str, object]):
    """``importlib.metadata.entry_points`` for the group: one fake distribution per plugin; a plugin
    that is an exception is raised when it is loaded (a failed import)."""

    def load(obj):
        if isinstance(obj, Exception):
            raise obj
        return obj

    eps = [SimpleNamespace(name=name, dist=SimpleNamespace(name=f"mmassist-{name}", version="0.0.1"),
                           load=lambda obj=obj: load(obj)) for name, obj in plugins.items()]
    return lambda group: eps if group == "mmassist" else []


def test_the_cli_lists_failed_plugins_and_reports_a_failed_build_in_one_line(checkpoint, tmp_path, monkeypatch,
                                                                           capsys):
    monkeypatch.delenv("MMASSIST_NO_PLUGINS")
    monkeypatch.setattr("mmassist.core.contract.host.importlib.metadata.entry_points", fake_entry_points({
        "broken_import": ImportError("No module named 'missing_dependency'"),
        "broken_register": BrokenRegisterPlugin(),
        "broken_build": BrokenBuildPlugin(),
    }))
    code, out, err = run_cli(["plugins"], capsys)
    assert code == 0 and "Traceback" not in err
    assert "image/broken" in out and "image/timm" in out
    assert "2 plugin(s) failed to load" in out
    assert "broken_import (mmassist-broken_import 0.0.1) failed at import: ImportError" in out
    assert "broken_register (mmassist-broken_register 0.0.1) failed at register: RuntimeError" in out

    # a checkpoint whose image encoder comes from the plugin that cannot build it
    folder = tmp_path / "model"
    shutil.copytree(checkpoint, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoders"] = {"image": {"name": "image/broken", "config": {}, "freeze": False, "lr": None}}
    cfg["fusion"]["modality_projectors"] = {}
    (folder / "config.json").write_text(json.dumps(cfg))
    man = json.loads((folder / "manifest.json").read_text())
    man["encoders"] = {"image": {"name": "image/broken", "plugin": "broken_build",
                                 "distribution": "mmassist-broken_build", "version": "0.0.1"}}
    (folder / "manifest.json").write_text(json.dumps(man))
    code, _, err = run_cli(["chat", "hi", "--model", folder], capsys)
    assert_user_error(code, err, "image/broken", "mmassist-broken_build", "failed to build", "corrupt")


def missing_plugin_checkpoint(checkpoint: Path, folder: Path) -> Path:
    shutil.copytree(checkpoint, folder)
    man = json.loads((folder / "manifest.json").read_text())
    man["encoders"]["video"].update(name="video/fancy", plugin="mmassist_fancy", distribution="mmassist-fancy",
                                    version="1.2.0")
    (folder / "manifest.json").write_text(json.dumps(man))
    return folder


def test_a_checkpoint_whose_plugin_is_missing_names_the_distribution_to_install(checkpoint, host, tmp_path,
                                                                               capsys):
    folder = missing_plugin_checkpoint(checkpoint, tmp_path / "model")
    with pytest.raises(core.MissingPluginError) as info:
        core.Assistant.from_pretrained(folder, host=host)
    assert "video/fancy" in str(info.value) and "pip install mmassist-fancy" in str(info.value)
    picture = tmp_path / "x.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))  # it exists: the model is what is missing
    for argv in (["chat", "hi", "--model", folder], ["caption", picture, "--model", folder],
                 ["eval", folder, "data.jsonl"]):
        code, _, err = run_cli(argv, capsys)
        assert_user_error(code, err, "video/fancy", "pip install mmassist-fancy")


def test_the_ui_model_store_reports_a_missing_plugin_and_keeps_the_other_models(checkpoint, host, tmp_path):
    from mmassist.ui.models import ModelStore

    folder = missing_plugin_checkpoint(checkpoint, tmp_path / "model")
    store = ModelStore(host, tmp_path / "runs", default=str(checkpoint))
    with pytest.raises(core.MissingPluginError, match="pip install mmassist-fancy"):
        store.get(str(folder))
    assert isinstance(store.get(None).assistant.chat("hi"), str)  # the default model still answers
