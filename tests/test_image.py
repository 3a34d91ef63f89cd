"""The image/timm plugin: tokens from forward_features, preprocessing from timm's data config."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmassist import core
from mmassist.plugins.image import TimmImageConfig, TimmImageEncoder


def test_cnn_map_becomes_tokens_and_vit_tokens_stay():
    cnn = TimmImageEncoder(TimmImageConfig(model_name="test_resnet", image_size=64))
    out = cnn.encode([Image.new("RGB", (50, 40), "red")])
    # test_resnet downsamples 32x: a 64x64 input gives a 2x2 map = 4 tokens of num_features.
    assert out.features.shape == (1, 4, cnn.backbone.num_features)

    vit = TimmImageEncoder(TimmImageConfig(model_name="test_vit", image_size=64))
    out = vit.encode([Image.new("RGB", (50, 40), "red")])
    patch = vit.backbone.patch_embed.patch_size[0]
    assert out.features.shape[1] == (64 // patch) ** 2 + vit.backbone.num_prefix_tokens


def test_preprocessing_follows_the_models_data_config():
    enc = TimmImageEncoder(TimmImageConfig(model_name="test_resnet", image_size=32))
    px = enc.preprocess([core.Media.of(Image.new("RGB", (32, 32), (255, 255, 255)))])["pixel_values"]
    mean = torch.tensor(enc.data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(enc.data_config["std"]).view(3, 1, 1)
    torch.testing.assert_close(px[0], ((1 - mean) / std).expand(3, 32, 32))


def test_local_safetensors_checkpoint_is_loaded(tmp_path):
    from safetensors.torch import save_file

    src = TimmImageEncoder(TimmImageConfig(model_name="test_resnet", image_size=32))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(path))
    loaded = TimmImageEncoder(TimmImageConfig(model_name="test_resnet", image_size=32, checkpoint_path=str(path)))
    for (name, a), b in zip(src.backbone.state_dict().items(), loaded.backbone.state_dict().values()):
        assert torch.equal(a, b), name


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not really")
    with pytest.raises(core.ConfigError, match="safetensors"):
        TimmImageEncoder(TimmImageConfig(model_name="test_resnet", checkpoint_path=str(path)))


def test_config_validation_names_the_field():
    with pytest.raises(core.ConfigError, match="image.image_size"):
        TimmImageConfig(image_size=3)
