"""Built-in plugin ``image/timm``: any timm model as an image encoder.

Features come from ``forward_features``: a ViT's tokens as they are, a CNN's spatial map flattened
to tokens (B, H*W, C). Preprocessing follows the model's own data config
(``timm.data.resolve_model_data_config``), so mean/std and crop match what the weights expect.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mmassist.core.schema import check_range, help_field
from mmassist.core.contract.encoders import Encoder, EncoderOutput, EncoderSpec
from mmassist.core.errors import ConfigError, PluginError, UndecodableInputError
from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.media import PIL_IMAGE_MIME, Media

IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff",
                    PIL_IMAGE_MIME)


@dataclass
class TimmImageConfig:
    """Which timm model encodes images, and how."""

    model_name: str = help_field("resnet18", help="timm model name (see timm.list_models())")
    pretrained: bool = help_field(False, help="load pretrained weights; they must be on this machine "
                                             "(the Hugging Face cache or checkpoint_path)")
    checkpoint_path: str | None = help_field(None, help="local weights file (.safetensors) for the model")
    model_kwargs: dict[str, Any] = help_field(default_factory=dict,
                                              help="extra keyword arguments for timm.create_model")
    image_size: int | None = help_field(None, help="input resolution; default: the model's own")
    pool_tokens: int | None = help_field(None, help="average-pool a CNN's spatial map to this many tokens "
                                                    "per side (N*N tokens); default: keep all")
    max_pixels: int = help_field(50_000_000, help="refuse larger images (decompression-bomb guard)")

    def __post_init__(self):
        if not self.model_name:
            raise ConfigError("image.model_name must name a timm model, e.g. 'resnet18'")
        if self.image_size is not None:
            check_range("image.image_size", self.image_size, 16, 4096)
        if self.pool_tokens is not None:
            check_range("image.pool_tokens", self.pool_tokens, 1, 64)
        check_range("image.max_pixels", self.max_pixels, 1)


def load_image(media: Media, max_pixels: int = 50_000_000):
    """Decode an image input to an RGB PIL image, with clear errors for bad or oversized files."""
    from PIL import Image

    if media.mime_type == PIL_IMAGE_MIME:
        img = media.value
        if img.width * img.height > max_pixels:
            raise UndecodableInputError(
                f"{media.name} is {img.width}x{img.height} pixels, over the limit of {max_pixels}; "
                "resize it first or raise max_pixels"
            )
        return img.convert("RGB")
    source = media.path if media.path is not None else io.BytesIO(media.read_bytes())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise UndecodableInputError(
                        f"{media.name} is {img.width}x{img.height} pixels, over the limit of {max_pixels}; "
                        "resize it first or raise max_pixels"
                    )
                img.load()
                return img.convert("RGB")
    except UndecodableInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UndecodableInputError(f"{media.name} looks like a decompression bomb and was refused: {e} "
                                    "If the image is genuine, resize it first") from None
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise UndecodableInputError(
            f"cannot decode {media.name} as an image ({type(e).__name__}: {e}); "
            "give a valid PNG, JPEG, GIF, BMP, WebP or TIFF file"
        ) from None


def create_timm_model(cfg: TimmImageConfig):
    """(the timm backbone, the local weights file it was loaded from or None), never using the network."""
    import timm

    kwargs = dict(cfg.model_kwargs)
    if cfg.image_size is not None and _takes_img_size(cfg.model_name):
        kwargs.setdefault("img_size", cfg.image_size)
    weights = cfg.checkpoint_path or (local_pretrained_weights(cfg.model_name) if cfg.pretrained else None)
    if cfg.checkpoint_path is not None:
        path = Path(cfg.checkpoint_path)
        if not path.is_file():
            raise ConfigError(f"image.checkpoint_path={cfg.checkpoint_path!r} does not exist")
        if path.suffix != ".safetensors":
            raise ConfigError("image.checkpoint_path must be a .safetensors file (pickle files are not loaded)")
    elif cfg.pretrained and weights is None:
        raise PluginError(
            f"pretrained weights for timm model {cfg.model_name!r} are not on this machine. Download them "
            "where there is network (timm.create_model(name, pretrained=True) fills the Hugging Face cache) "
            "and copy the cache here, or save them as .safetensors and set image.checkpoint_path; "
            "or set pretrained: false to train from scratch"
        )
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}  # never let timm go to the network
    try:
        model = timm.create_model(cfg.model_name, pretrained=weights is not None, num_classes=0, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"image.model_name={cfg.model_name!r} is not a timm model; "
                              f"see timm.list_models() for the names") from None
        raise
    return model, (str(weights) if weights is not None else None)


def local_pretrained_weights(model_name: str) -> str | None:
    """The cached .safetensors weights of a timm model, found without any network access, or None."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(model_name)
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        return None
    hub_id = pretrained_cfg.hf_hub_id
    for filename in ("model.safetensors", "open_clip_model.safetensors"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def _takes_img_size(model_name: str) -> bool:
    return any(k in model_name for k in ("vit", "deit", "beit", "eva", "swin", "mambaout", "maxvit", "coatnet"))


def features_to_tokens(feats: torch.Tensor, num_features: int, pool_tokens: int | None) -> torch.Tensor:
    """(B, N, C) tokens as they are; (B, C, H, W) or (B, H, W, C) maps to (B, H*W, C) tokens."""
    if feats.dim() == 3:
        return feats  # (B, N, C)
    if feats.dim() != 4:
        raise PluginError(f"timm forward_features gave a {feats.dim()}-D tensor; expected 3-D or 4-D")
    if feats.shape[1] != num_features and feats.shape[-1] == num_features:
        feats = feats.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    if pool_tokens is not None:
        feats = torch.nn.functional.adaptive_avg_pool2d(feats, pool_tokens)
    return feats.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)


class TimmImageEncoder(Encoder):
    """Image encoder over a timm backbone."""

    def __init__(self, config: TimmImageConfig):
        super().__init__()
        import timm.data

        self.config = config
        self.backbone, self.pretrained_source = create_timm_model(config)
        self.output_dim = int(self.backbone.num_features)
        data_cfg = timm.data.resolve_model_data_config(self.backbone)
        if config.image_size is not None:
            data_cfg["input_size"] = (3, config.image_size, config.image_size)
            data_cfg["crop_pct"] = 1.0
        self.data_config = data_cfg
        self.transform = timm.data.create_transform(**data_cfg, is_training=False)

    def load(self, media: Media):
        return load_image(media, self.config.max_pixels)

    def pixels(self, images: Sequence[Any]) -> torch.Tensor:
        """RGB PIL images -> (N, 3, H, W) normalised pixels."""
        return torch.stack([self.transform(img) for img in images])

    def preprocess(self, items: Sequence[Media]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels([self.load(m) for m in items])}

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:
        tokens = self.tokens(pixel_values)  # (B, T, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(features=tokens, mask=mask, pooled=tokens.mean(dim=1))

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels -> (N, T, D) feature tokens."""
        feats = self.backbone.forward_features(pixel_values)
        return features_to_tokens(feats, self.output_dim, self.config.pool_tokens)


def tiny_config() -> TimmImageConfig:
    return TimmImageConfig(model_name="test_resnet", image_size=64, pool_tokens=2)


def example_inputs(tmp_dir: Path) -> list[Any]:
    """A PNG file, JPEG bytes and a PIL image of simple drawn shapes."""
    from PIL import Image, ImageDraw

    images = []
    for i, colour in enumerate(["red", "blue", "green"]):
        img = Image.new("RGB", (96 + 16 * i, 80), "white")
        ImageDraw.Draw(img).ellipse([10, 10, 60, 60], fill=colour)
        images.append(img)
    png = Path(tmp_dir) / "shapes.png"
    images[0].save(png)
    buf = io.BytesIO()
    images[1].save(buf, format="JPEG")
    return [png, buf.getvalue(), images[2]]


# Config keys that only say where the first weights come from (a local weights file, timm's pretrained
# flag), with the values that build the encoder without them: a checkpoint holding the trained weights
# resets them, so it loads on a machine without that file.
INITIAL_WEIGHTS = {"checkpoint_path": None, "pretrained": False}


@hookimpl
def register_encoders(register):
    register(EncoderSpec(
        name="image/timm",
        modality="image",
        mime_types=IMAGE_MIME_TYPES,
        config_cls=TimmImageConfig,
        build=TimmImageEncoder,
        description="any timm model; tokens from forward_features",
        tiny_config=tiny_config,
        example_inputs=example_inputs,
        initial_weights=INITIAL_WEIGHTS,
    ))
