"""The plugin host: built-ins, registries, routing and isolation of broken in-process plugins.

Third-party plugins installed with pip are covered in test_third_party_plugin.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from mmassist import core
from mmassist.core.contract.testing import check_encoder
from mmassist.core.contract.encoders import EncoderSpec
from mmassist.plugins.image import TimmImageConfig, TimmImageEncoder

BUILTINS = {"text/hf": "text", "image/timm": "image", "video/decord": "video"}


def test_builtin_encoders_are_registered_with_their_metadata(host):
    rows = {r["name"]: r for r in host.describe()}
    assert set(BUILTINS) <= set(rows)
    for name, modality in BUILTINS.items():
        row = rows[name]
        spec = host.encoders.get(name)
        assert row["modality"] == spec.modality == modality
        assert spec.mime_types and all(m.startswith(f"{modality}/") for m in spec.mime_types)
        assert row["distribution"] == "mmassist" and row["version"] == core.__version__
        assert dataclasses.is_dataclass(spec.config_cls) and row["config"].endswith(spec.config_cls.__name__)
        assert spec.plugin.startswith("mmassist.plugins.")
    assert host.failed_plugins == []


def test_unknown_encoder_name_lists_what_is_available(host):
    with pytest.raises(core.UnknownNameError) as e:
        host.encoders.get("image/clip")
    assert "image/clip" in str(e.value) and "image/timm" in str(e.value) and "video/decord" in str(e.value)


def test_unknown_config_key_names_the_key_and_the_known_ones(host):
    with pytest.raises(core.ConfigError, match=r"image/timm\.model_nam\b.*model_name"):
        host.encoders.get("image/timm").make_config({"model_nam": "resnet18"})
    with pytest.raises(core.ConfigError, match=r"image_size.*whole number"):
        host.encoders.get("image/timm").make_config({"image_size": "big"})


def test_unknown_timm_model_is_a_config_error(host):
    with pytest.raises(core.ConfigError, match="not a timm model"):
        host.encoders.get("image/timm").create({"model_name": "no_such_net"})


def test_pretrained_weights_missing_says_how_to_provide_them(host, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: the weights are not here
    with pytest.raises(core.PluginError, match="checkpoint_path"):
        host.encoders.get("image/timm").create({"model_name": "resnet18", "pretrained": True})


def test_routing_by_content_not_by_name(host, tmp_path):
    from PIL import Image

    png = tmp_path / "photo.jpg"  # a PNG with a misleading name is still routed as an image
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    spec, media = host.route(png)
    assert spec.name == "image/timm" and media.mime_type == "image/png"
    assert host.route("a short review")[0].name == "text/hf"
    assert host.route(Image.new("RGB", (4, 4)))[0].name == "image/timm"


def test_routing_refuses_a_type_no_plugin_accepts(host, tmp_path):
    blob = tmp_path / "data.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(core.UnsupportedInputError, match=r"application/octet-stream.*image/timm"):
        host.route(blob)
    with pytest.raises(core.UnsupportedInputError, match="type int"):
        host.route(42)


def test_routing_respects_candidates(host):
    with pytest.raises(core.UnsupportedInputError):
        host.route("some text", candidates=["image/timm"])


def _spec(name: str, modality: str = "image") -> EncoderSpec:
    return EncoderSpec(name=name, modality=modality, mime_types=(f"{modality}/png",),
                       config_cls=TimmImageConfig, build=TimmImageEncoder)


class DuplicatePlugin:
    __name__ = "duplicate-plugin"

    @core.hookimpl
    def register_encoders(self, register):
        register(_spec("image/extra"))
        register(_spec("image/timm"))


class RaisingPlugin:
    __name__ = "raising-plugin"

    @core.hookimpl
    def register_encoders(self, register):
        raise RuntimeError("boom at registration")


class MisspelledPlugin:
    __name__ = "misspelled-plugin"

    @core.hookimpl
    def register_encoder(self, register):  # not a hook: check_pending() must catch it
        register(_spec("image/never"))


class GoodPlugin:
    __name__ = "good-plugin"

    @core.hookimpl
    def register_encoders(self, register):
        register(_spec("image/good"))


def test_broken_plugins_are_isolated_and_reported():
    host = core.Host(load_entrypoints=False,
                     plugins=[DuplicatePlugin(), RaisingPlugin(), MisspelledPlugin(), GoodPlugin()])
    names = host.encoders.names()
    assert set(BUILTINS) <= set(names) and "image/good" in names
    # The duplicate plugin registered nothing, not even its non-clashing encoder.
    assert "image/extra" not in names and "image/never" not in names
    failed = {f.name: f for f in host.failed_plugins}
    assert set(failed) == {"duplicate-plugin", "raising-plugin", "misspelled-plugin"}
    dup = failed["duplicate-plugin"]
    assert dup.stage == "register" and "mmassist.plugins.image" in dup.error and "duplicate-plugin" in dup.error
    assert failed["raising-plugin"].stage == "register" and "boom at registration" in failed["raising-plugin"].error
    assert failed["misspelled-plugin"].stage == "validate" and "register_encoder" in failed["misspelled-plugin"].error
    # The host still works.
    assert host.route("text")[0].name == "text/hf"


def test_a_build_failure_in_a_plugin_is_a_plugin_error():
    def broken_build(cfg):
        raise RuntimeError("weights corrupted")

    spec = dataclasses.replace(_spec("image/broken"), build=broken_build, plugin="p", distribution="mmassist-x")
    with pytest.raises(core.PluginError, match=r"image/broken.*mmassist-x.*weights corrupted"):
        spec.create()


def test_bad_spec_names_are_refused():
    with pytest.raises(core.PluginError, match="modality/backend"):
        _spec("Timm")
    with pytest.raises(core.PluginError, match="start with its modality"):
        _spec("video/timm", modality="image")


def test_no_plugins_switch(monkeypatch):
    monkeypatch.setenv("MMASSIST_NO_PLUGINS", "1")
    host = core.Host()
    assert set(host.encoders.names()) == set(BUILTINS)


# -- a modality the core does not know, declared file types, plugin mistakes ---------------------------


@dataclasses.dataclass
class BlobConfig:
    width: int = 8


class TransposedEncoder(core.Encoder):
    """Returns (B, D, T) instead of (B, T, D): the mistake the model must name."""

    def __init__(self, cfg: BlobConfig):
        super().__init__()
        self.config, self.output_dim = cfg, cfg.width
        self.proj = torch.nn.Linear(3, cfg.width)

    def preprocess(self, items):
        return {"x": torch.ones(len(items), 5, 3)}

    def forward(self, x):
        features = self.proj(x).transpose(1, 2)  # wrong on purpose
        return core.EncoderOutput(features, torch.ones(features.shape[:2], dtype=torch.bool))


class BlobPlugin:
    @core.hookimpl
    def register_encoders(self, register):
        register(EncoderSpec(name="blob/transposed", modality="blob", mime_types=("application/x-blob",),
                             extensions=(".blob",), magic=(b"BLOB1",), config_cls=BlobConfig,
                             build=TransposedEncoder))


def test_declared_extensions_and_magic_bytes_route_to_the_plugin(tmp_path):
    host = core.Host(load_entrypoints=False, plugins=[BlobPlugin()])
    named = tmp_path / "data.blob"
    named.write_text("some text that would read as text/plain")
    assert host.route(named)[0].name == "blob/transposed"  # the declared extension beats text/plain
    by_magic = tmp_path / "anything.bin"
    by_magic.write_bytes(b"BLOB1" + bytes(20))
    assert host.route(by_magic)[0].name == "blob/transposed"
    assert host.route(b"BLOB1 bytes")[0].name == "blob/transposed"
    assert host.route(str(named), candidates=["image/timm", "blob/transposed"])[0].name == "blob/transposed"
    assert ".blob" in host.file_extensions("blob") and host.media_modalities() == ["image", "video", "blob"]


def test_bad_file_type_declarations_are_refused():
    for bad in ({"extensions": ("csv",)}, {"extensions": ".csv"}, {"magic": b"X"}, {"magic": (b"",)}):
        with pytest.raises(core.PluginError, match="extensions|magic"):
            EncoderSpec(name="x/y", modality="x", mime_types=("a/b",), config_cls=BlobConfig,
                        build=TransposedEncoder, **bad)


def test_an_encoder_output_of_the_wrong_shape_names_the_encoder_and_its_origin(tmp_path):
    host = core.Host(load_entrypoints=False, plugins=[BlobPlugin()])
    cfg = {"encoders": {"blob": {"name": "blob/transposed"}},
           "decoder": {"init": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
                       "tokenizer": "bytes", "max_length": 128}}
    assistant = core.Assistant.from_config(cfg, host=host)
    blob = tmp_path / "x.blob"
    blob.write_bytes(b"BLOB1")
    with pytest.raises(core.PluginError) as info:
        assistant.chat("What is it?", media=[blob])
    message = str(info.value)
    assert "'blob/transposed'" in message and "(passed to Host)" in message
    assert "(B, D, T): transpose it to (B, T, D)" in message


def test_a_route_input_that_raises_or_names_a_non_candidate_is_that_plugins_failure(tmp_path):
    class Greedy:
        @core.hookimpl
        def route_input(self, media, candidates):
            return "image/not-registered"

    class Raising:
        @core.hookimpl
        def route_input(self, media, candidates):
            raise ValueError("oops")

    host = core.Host(load_entrypoints=False, plugins=[Greedy(), Raising()])
    png = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(png)
    assert host.route(png)[0].name == "image/timm"  # routing goes on past both
    failures = {f.name: f for f in host.failed_plugins}
    assert failures["Greedy"].stage == "route" and "'image/not-registered'" in failures["Greedy"].error
    assert failures["Raising"].stage == "route" and "ValueError: oops" in failures["Raising"].error
    assert 'raise ValueError("oops")' in failures["Raising"].traceback
    assert host.route(png)[0].name == "image/timm" and len(host.failed_plugins) == 2  # asked no more
    # The contract test reports such a plugin by name.
    fresh = core.Host(load_entrypoints=False, plugins=[Greedy()])
    with pytest.raises(AssertionError, match="Greedy.*failed at route"):
        check_encoder(fresh.encoders.get("image/timm"), tmp_path / "contract", host=fresh)


def test_a_plugin_that_registers_nothing_is_a_warning():
    class Forgot:
        def register_encoders(self, register):  # no @hookimpl
            pass

    host = core.Host(load_entrypoints=False, plugins=[Forgot()])
    assert host.failed_plugins == []
    [warning] = host.warnings
    assert "Forgot" in warning and "register_encoders without @hookimpl" in warning
