"""The fusion package: projectors, embeddings, joint layers, the fusion module and splicing."""

from __future__ import annotations

import pytest
import torch

from mmassist.core.schema import from_dict, to_dict
from mmassist.core.contract.encoders import EncoderOutput
from mmassist.core.errors import ConfigError, UnsupportedInputError
from mmassist.fusion import (
    IGNORE_INDEX,
    FusionModule,
    FusionModuleConfig,
    JointFusion,
    LinearProjector,
    MLPProjector,
    ModalityEmbedding,
    PerceiverResampler,
    ProjectorConfig,
    TemporalEmbedding,
    build_projector,
    check_token_counts,
    expand_placeholders,
    make_layout,
    splice,
    token_counts,
)

D_IN, D_OUT = 24, 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _output(n: int, t: int, d: int, lengths=None, time=False) -> EncoderOutput:
    mask = torch.ones(n, t, dtype=torch.bool)
    for i, length in enumerate(lengths or []):
        mask[i, length:] = False
    time_index = torch.arange(t).expand(n, t) if time else None
    return EncoderOutput(features=torch.randn(n, t, d), mask=mask, time_index=time_index)


# -- configs


def test_config_defaults_round_trip():
    cfg = FusionModuleConfig(modality_projectors={"video": {"kind": "resampler", "num_latents": 8}})
    assert isinstance(cfg.modality_projectors["video"], ProjectorConfig)
    assert cfg.projector_for("video").kind == "resampler"
    assert cfg.projector_for("image").kind == "mlp"
    assert from_dict(FusionModuleConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, words", [
    ({"projector": {"kind": "conv"}}, ["projector.kind", "'conv'", "'resampler'"]),
    ({"temporal_embeddings": "rope"}, ["fusion.temporal_embeddings", "'rope'", "'sinusoidal'"]),
    ({"joint_layers": -1}, ["fusion.joint_layers", "-1"]),
    ({"modality_projectors": {"video": {"num_latents": 0}}}, ["projector.num_latents", "0"]),
    ({"modality_projectors": {"Vid.eo": {}}}, ["'Vid.eo'"]),
    ({"position_embeddings": "image"}, ["fusion.position_embeddings", "must be a list"]),
    ({"position_embeddings": ["Image"]}, ["fusion.position_embeddings", "'Image'"]),
    ({"max_positions": 0}, ["fusion.max_positions", "0"]),
])
def test_config_errors_name_field_and_value(data, words):
    with pytest.raises(ConfigError) as e:
        from_dict(FusionModuleConfig, data, "fusion")
    for w in words:
        assert w in str(e.value)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="num_latent"):
        from_dict(FusionModuleConfig, {"projector": {"num_latent": 3}}, "fusion")


# -- projectors


@pytest.mark.parametrize("cls", [LinearProjector, MLPProjector])
def test_token_projectors_keep_length_mask_and_time(cls):
    out = _output(2, 5, D_IN, lengths=[5, 3], time=True)
    x, mask, time_index = cls(D_IN, D_OUT)(out.features, out.mask, out.time_index)
    assert x.shape == (2, 5, D_OUT)
    assert torch.equal(mask, out.mask) and torch.equal(time_index, out.time_index)


def test_build_projector_kinds():
    assert isinstance(build_projector(ProjectorConfig(kind="linear"), D_IN, D_OUT), LinearProjector)
    mlp = build_projector(ProjectorConfig(kind="mlp", hidden_size=48), D_IN, D_OUT)
    assert isinstance(mlp, MLPProjector) and mlp.linear_1.out_features == 48
    assert build_projector(ProjectorConfig(), D_IN, D_OUT).linear_1.out_features == D_OUT  # decoder width
    res = build_projector(ProjectorConfig(kind="resampler", num_latents=4), D_IN, D_OUT)
    assert isinstance(res, PerceiverResampler)
    with pytest.raises(ConfigError, match="projector.heads=5"):
        build_projector(ProjectorConfig(kind="resampler", heads=5), D_IN, D_OUT)


@pytest.mark.parametrize("t", [8, 16, 64])
def test_resampler_output_length_is_constant(t):
    res = PerceiverResampler(D_IN, D_OUT, num_latents=6, depth=2, heads=4).eval()
    out = _output(3, t, D_IN)
    x, mask, time_index = res(out.features, out.mask)
    assert x.shape == (3, 6, D_OUT) and mask.shape == (3, 6) and mask.all() and time_index is None


def test_resampler_ignores_padding():
    res = PerceiverResampler(D_IN, D_OUT, num_latents=4, depth=2, heads=4).eval()
    out = _output(2, 10, D_IN, lengths=[10, 6])
    x1, _, _ = res(out.features, out.mask)
    features = out.features.clone()
    features[1, 6:] = 1e3 * torch.randn(4, D_IN)  # junk where the mask is False
    x2, _, _ = res(features, out.mask)
    torch.testing.assert_close(x1, x2)
    features[1, 2] += 1.0  # a real token does matter
    x3, _, _ = res(features, out.mask)
    assert not torch.allclose(x1[1], x3[1])
    torch.testing.assert_close(x1[0], x3[0])  # and only for its own item
    # an item with no real token still gives finite output
    empty = torch.zeros(1, 10, dtype=torch.bool)
    assert torch.isfinite(res(out.features[:1], empty)[0]).all()


def test_mlp_projector_matches_llava():
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    cfg = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": D_IN, "intermediate_size": 48,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        text_config={"model_type": "llama", "hidden_size": D_OUT, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 100},
        projector_hidden_act="gelu", multimodal_projector_bias=True,
    )
    theirs = LlavaMultiModalProjector(cfg).eval()
    ours = MLPProjector(D_IN, D_OUT).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same names, same shapes
    x = torch.randn(2, 7, D_IN)
    torch.testing.assert_close(ours(x, torch.ones(2, 7, dtype=torch.bool))[0], theirs(x), rtol=0, atol=0)


# -- embeddings


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_temporal_embedding_depends_on_time_only(kind):
    emb = TemporalEmbedding(kind, max_time=16, dim=D_IN)
    e = emb(torch.tensor([[0, 1, 1, 5]]))  # (1, 4, D)
    assert e.shape == (1, 4, D_IN)
    torch.testing.assert_close(e[0, 1], e[0, 2])
    assert not torch.allclose(e[0, 0], e[0, 1]) and not torch.allclose(e[0, 1], e[0, 3])
    with pytest.raises(ConfigError, match=r"time index 16 .*fusion.max_time=16"):
        emb(torch.tensor([[3, 16]]))


def test_sinusoidal_table_is_not_saved():
    assert "table" not in dict(TemporalEmbedding("sinusoidal", 8, D_IN).state_dict())


def test_modality_embeddings_differ():
    emb = ModalityEmbedding(["image", "video"], D_OUT)
    assert emb("image").shape == (D_OUT,)
    assert not torch.allclose(emb("image"), emb("video"))
    assert set(emb.state_dict()) == {"embeddings.image", "embeddings.video"}


# -- joint fusion


def test_joint_fusion_identity_when_no_layers():
    x = torch.randn(2, 5, D_OUT)
    assert torch.equal(JointFusion(D_OUT, 0)(x, torch.ones(2, 5, dtype=torch.bool)), x)


def _module(**kw) -> FusionModule:
    cfg = FusionModuleConfig(**kw)
    return FusionModule(cfg, {"image": D_IN, "video": 16}, D_OUT)


def test_joint_fusion_mixes_modalities_within_an_example_only():
    fusion = _module(joint_layers=1).eval()
    outputs = {"image": _output(2, 3, D_IN), "video": _output(1, 4, 16, time=True)}
    layout = make_layout([["image", "video"], ["image"]])
    base = fusion(outputs, layout)
    # change example 0's video: example 0's image changes, example 1's image does not
    changed = dict(outputs, video=EncoderOutput(outputs["video"].features + 1.0, outputs["video"].mask,
                                                outputs["video"].time_index))
    after = fusion(changed, layout)
    assert not torch.allclose(base[0][0].tokens, after[0][0].tokens)
    torch.testing.assert_close(base[1][0].tokens, after[1][0].tokens)


def test_joint_fusion_wrong_heads():
    with pytest.raises(ConfigError, match="fusion.joint_heads=5"):
        _module(joint_layers=1, joint_heads=5)


# -- fusion module


def test_fusion_module_shapes_order_and_padding():
    fusion = _module(modality_projectors={"video": ProjectorConfig(kind="resampler", num_latents=4)},
                     temporal_embeddings="sinusoidal")
    outputs = {"image": _output(3, 5, D_IN, lengths=[5, 2, 5]), "video": _output(1, 9, 16, time=True)}
    layout = make_layout([["video", "image"], ["image", "image"]])
    assert layout == [[("video", 0), ("image", 0)], [("image", 1), ("image", 2)]]
    fused = fusion(outputs, layout)
    assert [[(m, t.shape) for m, t in ex] for ex in fused] == [
        [("video", (4, D_OUT)), ("image", (5, D_OUT))],
        [("image", (2, D_OUT)), ("image", (5, D_OUT))],  # padded tokens dropped
    ]
    assert token_counts(fused) == [[("video", 4), ("image", 5)], [("image", 2), ("image", 5)]]


def test_fusion_module_time_and_modality_embeddings_are_used():
    fusion = _module(projector=ProjectorConfig(kind="linear"))
    feats = torch.zeros(1, 2, 16)  # two identical frames at different times
    video = EncoderOutput(feats, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[0, 1]]))
    x, _ = fusion.project("video", video)
    assert not torch.allclose(x[0, 0], x[0, 1])
    same = EncoderOutput(feats, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[3, 3]]))
    x, _ = fusion.project("video", same)
    torch.testing.assert_close(x[0, 0], x[0, 1])
    # same features through the same projector weights, different modality -> different tokens
    both = FusionModule(FusionModuleConfig(projector=ProjectorConfig(kind="linear")), {"image": 16, "video": 16}, D_OUT)
    both.projectors["video"].load_state_dict(both.projectors["image"].state_dict())
    img = both.project("image", EncoderOutput(feats, torch.ones(1, 2, dtype=torch.bool)))[0]
    vid = both.project("video", EncoderOutput(feats, torch.ones(1, 2, dtype=torch.bool)))[0]
    assert not torch.allclose(img, vid)


def test_positions_in_frame_count_within_each_frame():
    from mmassist.fusion.embeddings import positions_in_frame

    ti = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2], [5, 5, 6, 6, 7, 7, 0, 0, 0]])
    assert positions_in_frame(ti).tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 1, 0, 1, 2]]


def test_position_embeddings_tell_where_a_token_is_in_its_image_or_frame():
    """Identical features at different places in an image (or a frame) become different tokens; the same
    place in two frames gets the same position vector (time is the temporal embedding's job)."""
    fusion = _module(projector=ProjectorConfig(kind="linear"), position_embeddings=["image", "video"],
                     temporal_embeddings="none")
    img = EncoderOutput(torch.zeros(1, 4, D_IN), torch.ones(1, 4, dtype=torch.bool))
    x, _ = fusion.project("image", img)
    assert all(not torch.allclose(x[0, i], x[0, j]) for i in range(4) for j in range(i))
    # a 2-frame clip, 2 tokens a frame: positions 0, 1, 0, 1
    vid = EncoderOutput(torch.zeros(1, 4, 16), torch.ones(1, 4, dtype=torch.bool), torch.tensor([[0, 0, 1, 1]]))
    x, _ = fusion.project("video", vid)
    torch.testing.assert_close(x[0, 0], x[0, 2])
    torch.testing.assert_close(x[0, 1], x[0, 3])
    assert not torch.allclose(x[0, 0], x[0, 1])
    # without them, the four image tokens are the same
    plain = _module(projector=ProjectorConfig(kind="linear"))
    x, _ = plain.project("image", img)
    torch.testing.assert_close(x[0, 0], x[0, 3])
    assert "position.image.embedding.weight" in dict(fusion.named_parameters())
    assert not any(n.startswith("position.") for n, _ in plain.named_parameters())


def test_position_embeddings_ignore_padding_and_refuse_too_many_tokens():
    fusion = _module(position_embeddings=["video"], max_positions=4)
    # one real frame of 3 tokens, then padded frames (index 0, masked): a run of 12 tokens at index 0
    time_index = torch.zeros(1, 15, dtype=torch.long)
    mask = torch.zeros(1, 15, dtype=torch.bool)
    mask[0, :3] = True
    fusion.project("video", EncoderOutput(torch.randn(1, 15, 16), mask, time_index))
    with pytest.raises(ConfigError, match="fusion.max_positions=4"):
        fusion.project("video", EncoderOutput(torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool),
                                              torch.zeros(1, 5, dtype=torch.long)))
    with pytest.raises(ConfigError, match="fusion.position_embeddings names 'audio'"):
        _module(position_embeddings=["audio"])


def test_fusion_module_rejects_bad_layout_and_config():
    fusion = _module()
    outputs = {"image": _output(2, 3, D_IN)}
    with pytest.raises(ValueError, match="exactly once"):
        fusion(outputs, [[("image", 0)]])
    with pytest.raises(ValueError, match="'video'"):
        fusion(outputs, [[("image", 0), ("video", 0)], [("image", 1)]])
    with pytest.raises(ConfigError, match="'audio'"):
        FusionModule(FusionModuleConfig(modality_projectors={"audio": {}}), {"image": D_IN}, D_OUT)


def test_gradients_reach_projectors_and_embeddings():
    fusion = _module(joint_layers=1, modality_projectors={"video": ProjectorConfig(kind="resampler",
                                                                                     num_latents=3)},
                     position_embeddings=["image"])
    outputs = {"image": _output(1, 3, D_IN), "video": _output(1, 5, 16, time=True)}
    fused = fusion(outputs, make_layout([["image", "video"]]))
    ids = torch.tensor([[5, 1, 6, 2, 7]])
    placeholders = {"image": 1, "video": 2}
    ids, _, _ = expand_placeholders(ids, None, None, placeholders, token_counts(fused))
    embeds = splice(torch.zeros(1, ids.shape[1], D_OUT), ids, placeholders, fused)
    embeds.pow(2).sum().backward()
    for name in ["projectors.image.linear_1.weight", "projectors.video.latents", "projectors.video.in_proj.weight",
                 "temporal.video.embedding.weight", "modality.embeddings.image", "joint.layers.0.linear1.weight",
                 "position.image.embedding.weight"]:
        grad = fusion.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


# -- placeholders and splicing

IMG, VID, PAD = 1, 2, 0
PLACEHOLDERS = {"image": IMG, "video": VID}


def test_expand_and_splice_put_tokens_in_place():
    ids = torch.tensor([[10, IMG, 11, VID, 12],
                        [13, IMG, 14, PAD, PAD]])
    mask = (ids != PAD).long()
    labels = torch.tensor([[-100, -100, 11, 20, 12],
                           [-100, 50, 14, -100, -100]])
    img0, vid0, img1 = torch.randn(2, D_OUT), torch.randn(3, D_OUT), torch.randn(1, D_OUT)
    items = [[("image", img0), ("video", vid0)], [("image", img1)]]
    new_ids, new_mask, new_labels = expand_placeholders(ids, mask, labels, PLACEHOLDERS,
                                                        [[("image", 2), ("video", 3)], [("image", 1)]])
    assert new_ids.tolist() == [[10, IMG, IMG, 11, VID, VID, VID, 12],
                                [13, IMG, 14, PAD, PAD, PAD, PAD, PAD]]
    assert new_mask.tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]
    assert new_labels.tolist() == [[-100, -100, -100, 11, -100, -100, -100, 12],
                                   [-100, -100, 14, -100, -100, -100, -100, -100]]
    text = torch.randn(2, 8, D_OUT)
    out = splice(text, new_ids, PLACEHOLDERS, items)
    torch.testing.assert_close(out[0, 1:3], img0)
    torch.testing.assert_close(out[0, 4:7], vid0)
    torch.testing.assert_close(out[1, 1:2], img1)
    is_text = (new_ids != IMG) & (new_ids != VID)
    torch.testing.assert_close(out[is_text], text[is_text])


def test_expand_keeps_left_padding():
    ids = torch.tensor([[PAD, 10, IMG], [10, 11, IMG]])
    mask = (ids != PAD).long()
    new_ids, new_mask, labels = expand_placeholders(ids, mask, None, PLACEHOLDERS,
                                                    [[("image", 3)], [("image", 1)]], pad_id=PAD)
    assert new_ids.tolist() == [[PAD, 10, IMG, IMG, IMG], [PAD, PAD, 10, 11, IMG]]
    assert new_mask.tolist() == [[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert labels is None
    assert IGNORE_INDEX == -100


def test_check_token_counts_messages():
    ids = torch.tensor([[IMG, 5, IMG, 6]])
    with pytest.raises(UnsupportedInputError) as e:
        check_token_counts(ids, PLACEHOLDERS, [[("image", 4)]])
    msg = str(e.value)
    assert "example 0" in msg and "2 <image> placeholders" in msg and "1 image was given" in msg
    with pytest.raises(UnsupportedInputError, match=r"0 <video> placeholders but 1 video was given"):
        check_token_counts(ids, PLACEHOLDERS, [[("image", 1), ("image", 1), ("video", 2)]])
    with pytest.raises(UnsupportedInputError, match=r"2 <image> slots .* 1 image has 3 feature tokens"):
        check_token_counts(ids, PLACEHOLDERS, [[("image", 3)]], expanded=True)
    with pytest.raises(UnsupportedInputError, match="no <audio> placeholder"):
        check_token_counts(ids, PLACEHOLDERS, [[("audio", 1)]])
    check_token_counts(ids, PLACEHOLDERS, [[("image", 7), ("image", 1)]])  # one placeholder per item: fine
    # splice refuses ids that were not expanded
    with pytest.raises(UnsupportedInputError, match="expand_placeholders"):
        splice(torch.zeros(1, 4, D_OUT), ids, PLACEHOLDERS, [[("image", torch.zeros(3, D_OUT))] * 2])
