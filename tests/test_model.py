"""The fused model on tiny configs: round trips, generation, reference parity, labels, inputs."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from PIL import Image

from mmassist import core
from mmassist.fusion import IGNORE_INDEX

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
TINY_DECODERS = {
    "llama": TINY_LLAMA,
    "qwen2": {**TINY_LLAMA, "model_type": "qwen2"},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512},
}
IMAGE = {"name": "image/timm", "config": {"model_name": "test_resnet", "image_size": 64}}
VIDEO = {"name": "video/decord", "config": {"backbone": {"model_name": "test_resnet"}, "image_size": 32,
                                           "num_frames": 4, "tokens_per_frame": 1}}
TEXT = {"name": "text/hf", "config": {"max_length": 32, "init_config": {
    "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64}}}


def tiny_cfg(decoder="llama", encoders=None, **sections) -> core.FusionConfig:
    data = {
        "encoders": encoders if encoders is not None else {"image": IMAGE},
        "decoder": {"init": TINY_DECODERS[decoder], "tokenizer": "bytes", "max_length": 512},
        "generation": {"max_new_tokens": 10},
        **sections,
    }
    return core.FusionConfig.from_dict(data)


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (48, 40), c) for c in ("red", "blue", "green")]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from mmassist.plugins.video import example_inputs

    return example_inputs(tmp_path_factory.mktemp("video"))[0]


def build(cfg, host, seed=0):
    torch.manual_seed(seed)
    return core.Assistant.from_config(cfg, host=host)


@pytest.mark.parametrize("decoder", list(TINY_DECODERS))
def test_save_load_round_trip_gives_identical_logits_and_text(decoder, host, images, tmp_path):
    asst = build(tiny_cfg(decoder), host)
    before = asst.chat("What is in this picture?", images=images[:1])
    conv = asst.processor.conversation("Describe.", {"image": images[:2]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)])
    with torch.no_grad():
        logits = asst.model(batch).logits
    out = asst.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "manifest.json",
                                               "tokenizer.json"}
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".pkl") for p in out.iterdir())
    loaded = core.Assistant.from_pretrained(out, host=host)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(batch).logits, logits, rtol=0, atol=0)
    assert loaded.chat("What is in this picture?", images=images[:1]) == before
    assert loaded.cfg == asst.cfg


def test_manifest_records_plugins_and_a_missing_plugin_names_the_distribution(host, tmp_path):
    asst = build(tiny_cfg(), host)
    out = asst.save_pretrained(tmp_path / "ckpt")
    man = json.loads((out / "manifest.json").read_text())
    assert man["format_version"] == 1 and man["mmassist_version"] == core.__version__
    assert man["encoders"]["image"] == {"name": "image/timm", "plugin": "mmassist.plugins.image",
                                        "distribution": "mmassist", "version": core.__version__}
    man["encoders"]["image"].update(name="image/fancy", distribution="mmassist-fancy", version="1.2")
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(core.MissingPluginError, match="pip install mmassist-fancy"):
        core.Assistant.from_pretrained(out, host=host)


def test_an_encoder_name_from_another_distribution_is_not_loaded_silently(host, tmp_path):
    out = build(tiny_cfg(), host).save_pretrained(tmp_path / "ckpt")
    man = json.loads((out / "manifest.json").read_text())
    man["encoders"]["image"]["distribution"] = "mmassist-better-images"  # made with another plugin's image/timm
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(core.MissingPluginError, match=r"image/timm' of mmassist-better-images.*comes from mmassist "
                                                      r"\(mmassist.plugins.image\)"):
        core.Assistant.from_pretrained(out, host=host)
    man["encoders"]["image"].update(distribution="mmassist", version="0.0.1")
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.warns(UserWarning, match=r"made with mmassist 0.0.1.*outputs may differ"):
        core.Assistant.from_pretrained(out, host=host)


def test_a_content_part_of_a_modality_the_model_lacks_says_so(host):
    asst = build(tiny_cfg(), host)
    for part in ({"type": "signal", "signal": "walk.csv"}, {"type": "signal_url", "signal_url": {"url": "x"}}):
        with pytest.raises(core.UnsupportedInputError, match="takes no signal input; it was built for image"):
            asst.chat([{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}])


def test_a_model_fine_tuned_from_a_local_weights_file_loads_without_that_file(host, images, tmp_path):
    """A trained encoder's weights are all in model.safetensors, so the file it started from is not needed
    to load it; a frozen one is referenced instead, and loading says that the file is gone."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "start.safetensors"
    torch.manual_seed(1)
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(weights))
    saved = {}
    for freeze in (False, True):
        image = {**IMAGE, "freeze": freeze, "config": {**IMAGE["config"], "checkpoint_path": str(weights)}}
        asst = build(tiny_cfg(encoders={"image": image}), host)
        saved[freeze] = asst.save_pretrained(tmp_path / f"ckpt-{freeze}"), asst.chat("What is it?", images=images[:1])
    weights.unlink()
    out, answer = saved[False]
    loaded = core.Assistant.from_pretrained(out, host=host)
    assert loaded.chat("What is it?", images=images[:1]) == answer
    assert loaded.cfg.encoders["image"].config["checkpoint_path"] is None
    with pytest.raises(core.ConfigError, match="checkpoint_path.*does not exist"):
        core.Assistant.from_pretrained(saved[True][0], host=host)


def test_weight_loading_is_strict(host, tmp_path):
    from safetensors.torch import load_file, save_file

    out = build(tiny_cfg(), host).save_pretrained(tmp_path / "ckpt")
    state = load_file(str(out / "model.safetensors"))
    state.pop(next(k for k in state if k.startswith("fusion.")))
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(core.ConfigError, match="missing: fusion"):
        core.Assistant.from_pretrained(out, host=host)


def test_frozen_pretrained_parts_are_referenced_not_copied(host, tmp_path):
    cfg = tiny_cfg(encoders={"text": {"name": "text/hf", "freeze": True, "config": {"max_length": 16}}})
    asst = build(cfg, host)
    out = asst.save_pretrained(tmp_path / "ckpt")
    man = json.loads((out / "manifest.json").read_text())
    assert "encoders.text." in man["referenced"]
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    assert size_mb < 5, f"the frozen MiniLM (90 MB) must not be copied; checkpoint is {size_mb:.1f} MB"
    loaded = core.Assistant.from_pretrained(out, host=host)
    assert loaded.chat("Is it good?", media=["a witty film"]) == asst.chat("Is it good?", media=["a witty film"])


@pytest.mark.parametrize("decoder", list(TINY_DECODERS))
def test_kv_cache_generation_equals_no_cache(decoder, host, images):
    from mmassist.core.runtime.generate import generate_ids

    asst = build(tiny_cfg(decoder), host)
    convs = [asst.processor.conversation("Describe it in detail.", {"image": images[:1]}),
             asst.processor.conversation("Hi", {"image": images[1:3]})]  # different lengths: left padding
    batch = asst.processor.collate([asst.processor.encode(c, add_generation_prompt=True) for c in convs],
                                   padding_side="left")
    gen = core.GenerationConfig(max_new_tokens=12)
    with_cache = torch.stack(list(generate_ids(asst.model, batch, gen, eos_ids=[-1], use_cache=True)), 1)
    without = torch.stack(list(generate_ids(asst.model, batch, gen, eos_ids=[-1], use_cache=False)), 1)
    assert torch.equal(with_cache, without)
    # batched generation gives each row what it gets alone (padding does not leak)
    alone = asst.processor.collate([asst.processor.encode(convs[0], add_generation_prompt=True)], padding_side="left")
    first = torch.stack(list(generate_ids(asst.model, alone, gen, eos_ids=[-1])), 1)
    assert torch.equal(first[0], with_cache[0])


def test_greedy_matches_transformers_generate(host, images):
    asst = build(tiny_cfg(), host)
    conv = asst.processor.conversation("Describe.", {"image": images[:1]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)], padding_side="left")
    from mmassist.core.runtime.generate import generate_ids

    ours = torch.stack(list(generate_ids(asst.model, batch, core.GenerationConfig(max_new_tokens=8), eos_ids=[-1])), 1)
    with torch.no_grad():
        embeds, mask, _, _ = asst.model.embed(batch)
        ref = asst.model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8,
                                          do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, ref[:, -8:])


@pytest.mark.filterwarnings("ignore:Passing `no_repeat_ngram_size`:UserWarning")
def test_no_repeat_ngram_size_stops_loops_as_transformers_does(host, images):
    """Greedy decoding of an untrained decoder loops; with no_repeat_ngram_size no run of n tokens comes
    twice in an answer, and the tokens are those of transformers' generate() with the same setting."""
    from mmassist.core.runtime.generate import generate_ids, repeated_ngram_ids

    assert repeated_ngram_ids([5, 6, 7, 5, 6], 3) == [7]  # 5 6 was followed by 7: a second "5 6 7" is banned
    assert repeated_ngram_ids([5, 6, 7, 5, 6], 0) == [] and repeated_ngram_ids([5, 6], 3) == []
    asst = build(tiny_cfg(), host)
    conv = asst.processor.conversation("Describe.", {"image": images[:1]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)], padding_side="left")

    def ours(n: int) -> list[int]:
        gen = core.GenerationConfig(max_new_tokens=40, no_repeat_ngram_size=n)
        return torch.cat(list(generate_ids(asst.model, batch, gen, eos_ids=[-1]))).tolist()

    def bigrams(tokens: list[int]) -> list[tuple[int, int]]:
        return list(itertools.pairwise(tokens))

    looping = ours(0)
    assert len(set(bigrams(looping))) < len(bigrams(looping))  # the case this is for
    kept = ours(2)
    assert len(set(bigrams(kept))) == len(bigrams(kept))
    with torch.no_grad():
        embeds, mask, _, _ = asst.model.embed(batch)
        ref = asst.model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=40,
                                          do_sample=False, eos_token_id=None, pad_token_id=0, no_repeat_ngram_size=2)
    assert kept == ref[0, -40:].tolist()
    with pytest.raises(core.ConfigError, match="no_repeat_ngram_size"):
        core.GenerationConfig(no_repeat_ngram_size=-1)


def test_streamed_pieces_join_to_the_whole_answer(host, images):
    asst = build(tiny_cfg(), host)
    whole = asst.chat("What colour?", images=images[:1], max_new_tokens=16)
    pieces = list(asst.chat("What colour?", images=images[:1], max_new_tokens=16, stream=True))
    assert len(pieces) > 1 and "".join(pieces) == whole


def test_sampling_options_and_stop_strings(host, images):
    asst = build(tiny_cfg(), host)
    a = asst.chat("Hi", images=images[:1], temperature=1.0, top_p=0.9, top_k=20, repetition_penalty=1.2, seed=3)
    b = asst.chat("Hi", images=images[:1], temperature=1.0, top_p=0.9, top_k=20, repetition_penalty=1.2, seed=3)
    assert a == b  # seeded sampling is reproducible
    full = asst.chat("Hi", images=images[:1], max_new_tokens=16)
    stop = full[3:5]
    cut = asst.chat("Hi", images=images[:1], max_new_tokens=16, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(asst.chat("Hi", images=images[:1], max_new_tokens=16, stop=[stop], stream=True)) == cut
    with pytest.raises(core.ConfigError, match="unknown generation option"):
        asst.chat("Hi", images=images[:1], temprature=0.5)


def test_top_p_and_top_k_filtering():
    from mmassist.core.runtime.generate import next_token_logits_processed

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = torch.zeros(1, 1, dtype=torch.long)
    kept = next_token_logits_processed(logits, seen, core.GenerationConfig(temperature=1.0, top_p=0.7))
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = next_token_logits_processed(logits, seen, core.GenerationConfig(temperature=1.0, top_k=3))
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
    penalised = next_token_logits_processed(logits, seen, core.GenerationConfig(repetition_penalty=2.0))
    assert penalised[0, 0] == logits[0, 0] * 2  # a negative logit of a seen token is pushed down


def test_parity_with_transformers_llava(host, images):
    """Same projector, same Llama weights, same image features and prompt: same logits as LLaVA."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    cfg = tiny_cfg(fusion={"projector": {"kind": "mlp"}, "modality_embeddings": False,
                           "temporal_embeddings": "none"})
    asst = build(cfg, host)
    model = asst.model
    conv = asst.processor.conversation("What is in this picture?", {"image": images[:1]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)])
    with torch.no_grad():
        ours = model(batch).logits
        feats = model.encode_media(batch)["image"].features  # (1, T, D_enc)
        _, _, _, ids = model.embed(batch)

    dec = model.decoder.config
    image_id = model.placeholder_ids["image"]
    llava_cfg = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": feats.shape[-1], "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 32, "image_size": 32, "patch_size": 16},
        text_config=LlamaConfig(**{k: getattr(dec, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters")}),
        image_token_id=image_id, projector_hidden_act="gelu", vision_feature_layer=-1,
        vision_feature_select_strategy="full", multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    llava.model.multi_modal_projector.load_state_dict(model.fusion.projectors["image"].state_dict())
    llava.model.language_model.load_state_dict(model.decoder.model.state_dict())
    llava.lm_head.load_state_dict(model.decoder.lm_head.state_dict())

    class GivenFeatures(torch.nn.Module):  # stands in for LLaVA's vision tower: the same features
        def forward(self, pixel_values, **kwargs):
            return BaseModelOutputWithPooling(last_hidden_state=feats, hidden_states=(feats,))

    llava.model.vision_tower = GivenFeatures()
    with torch.no_grad():
        ref = llava(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32), attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_token_count_check_names_both_counts(host, images):
    asst = build(tiny_cfg(), host)
    with pytest.raises(core.UnsupportedInputError, match=r"2 <image> placeholder\(s\) but 1 image"):
        asst.chat("Compare <image> and <image>", images=images[:1])
    with pytest.raises(core.UnsupportedInputError, match="takes no video input"):
        asst.chat("What happens?", videos=[b"\x00" * 10])


def test_labels_cover_only_the_assistant_turns(host):
    asst = build(tiny_cfg(), host)
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A red disc."},
                {"role": "user", "content": "And the colour?"}, {"role": "assistant", "content": "Red."}]
    conv = asst.processor.conversation(messages, {"image": [Image.new("RGB", (8, 8))]})
    enc = asst.processor.encode(conv, add_generation_prompt=False, with_labels=True)
    learned = asst.tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])
    assert learned == "A red disc.<|im_end|>\nRed.<|im_end|>\n"
    batch = asst.processor.collate([enc])
    _, _, labels, ids = asst.model.embed(batch)
    assert (labels[ids == asst.model.placeholder_ids["image"]] == IGNORE_INDEX).all()
    out = asst.model(batch)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_llava_and_openai_message_formats_are_equivalent(host, images):
    asst = build(tiny_cfg(), host)
    llava = [{"from": "human", "value": "<image>\nWhat is it?"}]
    openai = [{"role": "user", "content": [{"type": "image", "image": images[0]},
                                           {"type": "text", "text": "\nWhat is it?"}]}]
    a = asst.processor.conversation(llava, {"image": images[:1]})
    b = asst.processor.conversation(openai)
    assert a.messages == b.messages
    assert asst.chat(llava, images=images[:1]) == asst.chat(openai)


def test_image_video_text_in_one_model_and_one_prompt(host, images, video):
    cfg = tiny_cfg(encoders={"image": IMAGE, "video": VIDEO, "text": TEXT},
                   fusion={"joint_layers": 1, "modality_projectors": {"video": {"kind": "resampler",
                                                                                "num_latents": 4}}})
    asst = build(cfg, host)
    answer = asst.chat("Compare <image>, <video> and <text>.", images=images[:1], videos=[video],
                       media=["a quiet review"])
    assert isinstance(answer, str)
    assert isinstance(asst.caption(video), str)
    # several inputs of several kinds in one batch, with a loss that reaches every part
    conv = asst.processor.conversation([{"role": "user", "content": "<image><video><text>"},
                                        {"role": "assistant", "content": "ok"}],
                                       {"image": images[:1], "video": [video], "text": ["hello"]})
    batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=False, with_labels=True)])
    asst.model.train()
    asst.model(batch).loss.backward()
    for m in ("image", "video", "text"):
        grads = [p.grad for p in asst.model.encoders[m].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reaches the {m} encoder"


def test_resampler_keeps_the_sequence_length_constant_as_frames_grow(host, tmp_path):
    import numpy as np

    from mmassist.core.contract.testing import write_test_video

    lengths = {}
    for frames in (4, 8, 16):
        cfg = tiny_cfg(encoders={"video": {**VIDEO, "config": {**VIDEO["config"], "num_frames": frames}}},
                       fusion={"modality_projectors": {"video": {"kind": "resampler", "num_latents": 6}}})
        asst = build(cfg, host)
        path = tmp_path / f"clip{frames}.mp4"
        write_test_video(path, np.zeros((20, 32, 32, 3), dtype=np.uint8), fps=10)
        conv = asst.processor.conversation("What happens?", {"video": [path]})
        batch = asst.processor.collate([asst.processor.encode(conv, add_generation_prompt=True)])
        with torch.no_grad():
            embeds, _, _, _ = asst.model.embed(batch)
        lengths[frames] = embeds.shape[1]
    assert len(set(lengths.values())) == 1, lengths


def test_classification_head(host):
    cfg = tiny_cfg(encoders={"text": TEXT}, task={"kind": "classification", "labels": ["negative", "positive"],
                                                  "prompt": "Review: <text>\nSentiment:"})
    asst = build(cfg, host)
    label = asst.classify("a gorgeous, witty film")
    assert label in ("negative", "positive")
    scores = asst.classify(["dull", "great"], return_scores=True)
    assert len(scores) == 2 and abs(sum(scores[0].values()) - 1) < 1e-5
    with pytest.raises(core.ConfigError, match="not classification"):
        build(tiny_cfg(), host).classify("x")


def test_config_is_not_mutated_and_round_trips(host, tmp_path):
    cfg = tiny_cfg()
    before = copy.deepcopy(cfg)
    asst = build(cfg, host)
    asst.chat("hi", images=[Image.new("RGB", (8, 8))])
    asst.save_pretrained(tmp_path / "c")
    assert cfg == before
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert core.FusionConfig.from_file(tmp_path / name) == cfg


def test_numbers_with_an_exponent_are_numbers_in_yaml_configs(tmp_path):
    """``lr: 3e-4`` is a number (PyYAML alone reads it as a string: YAML 1.1 wants ``3.0e-4``)."""
    path = tmp_path / "c.yaml"
    path.write_text("decoder:\n  init: {model_type: llama}\n  tokenizer: bytes\ntraining:\n  lr: 3e-4\n"
                    "  weight_decay: 1E-2\n  betas: [0.9, 9.99e-1]\n  epochs: 2\n")
    t = core.FusionConfig.from_file(path).training
    assert (t.lr, t.weight_decay, t.betas, t.epochs) == (3e-4, 1e-2, [0.9, 0.999], 2)
    from mmassist.core.cli import parse_assignment

    assert parse_assignment("training.lr=1e-9") == ("training.lr", 1e-9)
    assert parse_assignment("task.prompt=1e-9x") == ("task.prompt", "1e-9x")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(core.ConfigError, match=r"decoder\.init\.?.*|decoder: give exactly one"):
        core.FusionConfig.from_dict({"decoder": {"path": "/x", "init": {"model_type": "llama"}}})
    with pytest.raises(core.ConfigError, match=r"unknown config key fusion\.projector\.knd"):
        core.FusionConfig.from_dict({"fusion": {"projector": {"knd": "mlp"}}})
    with pytest.raises(core.ConfigError, match=r"encoders\.image\.freeze=.*true or false"):
        core.FusionConfig.from_dict({"encoders": {"image": {"name": "image/timm", "freeze": "yes"}}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("decoder:\n  init: [unclosed\n")
    with pytest.raises(core.ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        core.FusionConfig.from_file(bad)


def test_a_third_party_modality_flows_through_the_same_model(tmp_path, images):
    """The example audio plugin (examples/mmassist-audio), registered as a plugin object."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "mmassist-audio"))
    try:
        import mmassist_audio
        from mmassist_audio.logmel import example_inputs
    finally:
        sys.path.pop(0)
    host = core.Host(load_entrypoints=False, plugins=[mmassist_audio])
    cfg = tiny_cfg(encoders={"image": IMAGE, "audio": {"name": "audio/logmel", "config": {"n_mels": 16,
                                                                                          "hidden_dim": 32}}})
    asst = build(cfg, host)
    wav = example_inputs(tmp_path)[0]
    assert isinstance(asst.chat("What do you hear and see?", images=images[:1], media=[wav]), str)
    out = asst.save_pretrained(tmp_path / "ckpt")
    assert core.Assistant.from_pretrained(out, host=host).chat("Hi", media=[wav]) == asst.chat("Hi", media=[wav])


def test_encode_user_text_reads_each_user_turn_through_the_text_encoder(host, images):
    cfg = tiny_cfg(encoders={"image": IMAGE, "text": TEXT}, task={"kind": "chat", "encode_user_text": True})
    asst = build(cfg, host)
    messages = [{"role": "user", "content": "<image>\nWhat colour is it?"}, {"role": "assistant", "content": "red"},
                {"role": "user", "content": "And its shape?"}]
    conv = asst.processor.conversation(messages, {"image": images[:1]})
    assert [m["content"] for m in conv.messages] == ["<text>\n<image>\nWhat colour is it?", "red",
                                                     "<text>\nAnd its shape?"]
    assert [m.value for m in conv.items["text"]] == ["What colour is it?", "And its shape?"]
    # the text items change the answer's inputs: the encoder's features reach the decoder
    enc = asst.processor.encode(conv, add_generation_prompt=True)
    assert enc.item_modalities == ["text", "image", "text"]
    embeds = asst.model.embed(asst.processor.collate([enc]))[0]
    plain = build(tiny_cfg(encoders={"image": IMAGE, "text": TEXT}), host)
    plain_enc = plain.processor.encode(plain.processor.conversation(messages, {"image": images[:1]}),
                                       add_generation_prompt=True)
    assert embeds.shape[1] > plain.model.embed(plain.processor.collate([plain_enc]))[0].shape[1]
    assert isinstance(asst.chat("Is this review positive or negative?"), str)
    # explicit text items are left as given; a model without a text encoder refuses the option
    given = asst.processor.conversation("Compare <text>.", {"text": ["a review"]})
    assert [m.value for m in given.items["text"]] == ["a review"]
    with pytest.raises(core.ConfigError, match="encode_user_text needs a text encoder"):
        build(tiny_cfg(task={"kind": "chat", "encode_user_text": True}), host)


def test_a_lora_wrapped_decoder_is_given_the_cache_under_the_name_its_model_takes():
    """peft's forward takes **kwargs, so the cache's name (``cache`` in recent transformers 5.x, which warns
    on every step when given ``past_key_values``) is read from the model it wraps."""
    import inspect
    import warnings

    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmassist.core.runtime.generate import cache_keyword

    base = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    expected = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert cache_keyword(wrapped) == cache_keyword(base) == expected
    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated name would raise here
        first = wrapped(input_ids=ids, use_cache=True)
        wrapped(input_ids=ids[:, -1:], use_cache=True, **{expected: first.past_key_values})


def test_bfloat16_on_a_cpu_without_native_bf16_computes_in_float32_and_says_why(monkeypatch):
    from mmassist.core.runtime import assistant

    cpu = torch.device("cpu")
    assert isinstance(assistant.cpu_has_bf16(), bool)
    monkeypatch.setattr(assistant, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16.*float32"):
        assert assistant.resolve_dtype("bfloat16", cpu) == torch.float32
    assert assistant.resolve_dtype("auto", cpu) == torch.float32
    assert assistant.resolve_dtype("bfloat16", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(assistant, "cpu_has_bf16", lambda: True)
    assert assistant.resolve_dtype("bf16", cpu) == torch.bfloat16


@pytest.mark.parametrize("decoder", list(TINY_DECODERS))
def test_the_training_loss_computes_logits_only_where_a_token_is_scored(decoder, host, images):
    from mmassist.core.runtime.model import causal_lm_loss, takes_logits_to_keep

    asst = build(tiny_cfg(decoder), host)
    convs = [asst.processor.conversation([{"role": "user", "content": "<image>\nWhat is it?"},
                                          {"role": "assistant", "content": answer}], {"image": images[:1]})
             for answer in ("A red disc.", "A blue square, small, at the top left.")]
    batch = asst.processor.collate([asst.processor.encode(c, add_generation_prompt=False, with_labels=True)
                                    for c in convs])
    embeds, mask, labels, _ = asst.model.embed(batch)
    with torch.no_grad():
        out = asst.model(batch)
        full = asst.model.decoder(inputs_embeds=embeds, attention_mask=mask).logits
    assert takes_logits_to_keep(asst.model.decoder)
    scored = int((labels[:, 1:] != IGNORE_INDEX).any(0).sum())
    assert out.logits.shape == (2, scored, full.shape[-1]) and scored < labels.shape[1] - 16  # 16: the image
    torch.testing.assert_close(out.loss, causal_lm_loss(full, labels), rtol=1e-5, atol=1e-6)
