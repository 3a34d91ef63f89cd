"""The encoder contract: what every registered encoder must do, as a function tests can call.

Third-party plugin authors run the same check in their own test suite::

    from mmassist import core
    from mmassist.core.contract.testing import check_encoder

    def test_contract(tmp_path):
        check_encoder(core.Host().encoders.get("audio/logmel"), tmp_path)

Our own suite runs it over every encoder the host finds (``tests/test_encoder_contract.py``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from mmassist.core.contract.encoders import Encoder, EncoderOutput, EncoderSpec, check_output
from mmassist.core.contract.host import Host
from mmassist.core.contract.media import Media
from mmassist.core.errors import MMAssistError, PluginError


def check_encoder(spec: EncoderSpec, tmp_dir: Path, inputs: list[Any] | None = None,
                  host: Host | None = None) -> EncoderOutput:
    """Build ``spec`` tiny, encode real inputs and check the output contract; return the output.

    Checks: the spec has a tiny config and example inputs; every example input is of a type the spec
    accepts (a MIME type or a declared extension or magic bytes) and the host routes it to this encoder
    when it is the only candidate, through every plugin's ``route_input`` (the plugin's own included),
    none of which fails on it; ``preprocess`` gives CPU tensors; ``forward`` gives features
    (B, T, output_dim), a bool mask (B, T) with at least one real token per input, an optional long time
    index (B, T) and pooled (B, output_dim); all values finite; gradients reach every trainable parameter
    that the output depends on; results do not depend on what else is in the batch.

    :param host: the :class:`mmassist.core.Host` the spec was registered with (default: a new one, which
        finds installed plugins through their entry points).
    """
    assert spec.tiny_config is not None, f"{spec.name}: EncoderSpec.tiny_config is required for tests"
    assert spec.example_inputs is not None, f"{spec.name}: EncoderSpec.example_inputs is required for tests"
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    items = inputs if inputs is not None else spec.example_inputs(tmp_dir)
    assert len(items) >= 2, f"{spec.name}: example_inputs must give at least two inputs"
    media = [Media.of(x) for x in items]
    for m in media:
        assert spec.accepts(m), (
            f"{spec.name}: example input {m.name} has type {m.mime_type}, not one of {spec.mime_types}, "
            f"and is not of its declared file types (extensions {spec.extensions}, magic {spec.magic})"
        )
    _check_routing(spec, media, host if host is not None else Host())

    encoder = spec.create(spec.tiny_config())
    assert isinstance(encoder, Encoder)
    encoder.eval()
    batch = encoder.preprocess(media)
    assert isinstance(batch, dict) and batch, f"{spec.name}: preprocess must return a non-empty dict"
    for key, value in batch.items():
        assert isinstance(value, torch.Tensor), f"{spec.name}: preprocess()[{key!r}] is not a tensor"
        assert value.device.type == "cpu", f"{spec.name}: preprocess()[{key!r}] must stay on the CPU"

    with torch.no_grad():
        out = encoder(**batch)
    _check_output(spec, encoder, out, len(media))

    # The same input alone gives the same features as inside the batch (padding is masked).
    with torch.no_grad():
        single = encoder(**encoder.preprocess(media[:1]))
    torch.testing.assert_close(
        single.features[0][single.mask[0]], out.features[0][out.mask[0]], atol=1e-4, rtol=1e-4,
        msg=lambda m: f"{spec.name}: features of an input change with its batch: {m}",
    )

    encoder.train()
    out = encoder(**batch)
    loss = out.features[out.mask].float().pow(2).mean()
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if trainable:
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable), (
            f"{spec.name}: no gradient reaches the encoder's trainable parameters"
        )
    return out


def _check_routing(spec: EncoderSpec, media: list[Media], host: Host) -> None:
    """Every example input routes to ``spec`` when it is the only candidate, and no plugin's
    ``route_input`` fails on it (with every encoder as a candidate, too)."""
    assert spec.name in host.encoders and host.encoders.get(spec.name).plugin == spec.plugin, (
        f"{spec.name}: the host given does not hold this spec (pass the host it was registered with)")
    failed_before = len(host.failed_plugins)
    for m in media:
        routed, _ = host.route(m, candidates=[spec.name])
        assert routed.name == spec.name, f"{spec.name}: {m.name} is routed to {routed.name}"
        try:
            host.route(m)
        except MMAssistError:
            pass  # another encoder's decoder may refuse it: not this contract's business
    broken = host.failed_plugins[failed_before:]
    assert not broken, f"{spec.name}: routing its example inputs failed: " + "; ".join(map(str, broken))


def _check_output(spec: EncoderSpec, encoder: Encoder, out: EncoderOutput, batch_size: int) -> None:
    try:  # the shapes, as every model checks them (check_output); then what a model does not check
        check_output(spec, encoder, out, batch_size)
    except PluginError as e:
        raise AssertionError(str(e)) from None
    f = out.features
    assert f.shape[1] >= 1, f"{spec.name}: no tokens"
    assert torch.isfinite(f).all(), f"{spec.name}: features are not finite"
    assert out.mask.any(dim=1).all(), f"{spec.name}: an input has no real token"
    if out.time_index is not None:
        assert out.time_index.shape == f.shape[:2], f"{spec.name}: time_index must be (B, T)"
        assert out.time_index.dtype == torch.long, f"{spec.name}: time_index must be long"
    if out.pooled is not None:
        assert out.pooled.shape == (batch_size, encoder.output_dim), f"{spec.name}: pooled must be (B, D)"
        assert torch.isfinite(out.pooled).all(), f"{spec.name}: pooled is not finite"


# -- test media: videos a plugin's example_inputs or a test can write --------------------------------------------------------------------------------

_DEFAULT_CODECS = {".mp4": ("libx264", "mpeg4"), ".mov": ("libx264", "mpeg4"), ".mkv": ("libx264", "mpeg4"),
                   ".webm": ("libvpx-vp9", "libvpx"), ".avi": ("mpeg4",)}


def write_test_video(path: str | Path, frames: Any, fps: float = 8.0, codec: str | None = None,
                     options: dict[str, str] | None = None) -> Path:
    """Write (F, H, W, 3) uint8 RGB frames as a video file with PyAV; return the path.

    The container follows the file suffix (.mp4, .mkv, .webm, .mov, .avi). ``codec`` defaults to
    H.264 (libx264, else mpeg4) and, for WebM, VP9 (else VP8). H and W must be even (yuv420p).
    """
    import av
    import numpy as np

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty (F, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame size {width}x{height} must be even in both directions (yuv420p)")
    if codec is None:
        codec = _pick_codec(path.suffix.lower())
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush
    return path


def _pick_codec(suffix: str) -> str:
    import av

    for name in _DEFAULT_CODECS.get(suffix, ("libx264", "mpeg4")):
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # not built into this FFmpeg
            continue
    raise ValueError(f"no video encoder for {suffix!r} files in this PyAV build; pass codec=")


def moving_shapes(num_frames: int = 16, height: int = 48, width: int = 64, seed: int = 0):
    """(F, H, W, 3) uint8 frames: a square moving right and a disc moving down on a dark background."""
    import numpy as np

    rng = np.random.default_rng(seed)
    colours = rng.integers(96, 256, size=(2, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    side, radius = max(2, height // 4), max(2, height // 6)
    frames = np.full((num_frames, height, width, 3), 24, dtype=np.uint8)
    for t in range(num_frames):
        progress = t / max(1, num_frames - 1)
        x0, y0 = round(progress * (width - side)), (height - side) // 2
        frames[t, y0:y0 + side, x0:x0 + side] = colours[0]
        cy, cx = radius + progress * (height - 2 * radius - 1), width / 3
        frames[t][(ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2] = colours[1]
    return frames
