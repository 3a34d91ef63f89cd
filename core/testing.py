"""The encoder contract: what every registered encoder must do, as a function tests can call.

Third-party plugin authors run the same check in their own test suite::

    import core
    from core.testing import check_encoder

    def test_contract(tmp_path):
        check_encoder(core.Host().encoders.get("audio/logmel"), tmp_path)

Our own suite runs it over every encoder the host finds (``tests/test_encoder_contract.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.encoders import Encoder, EncoderOutput, EncoderSpec
from core.media import Media, mime_matches


def check_encoder(spec: EncoderSpec, tmp_dir: Path, inputs: list[Any] | None = None) -> EncoderOutput:
    """Build ``spec`` tiny, encode real inputs and check the output contract; return the output.

    Checks: the spec has a tiny config and example inputs; every example input is a MIME type the
    spec accepts; ``preprocess`` gives CPU tensors; ``forward`` gives features (B, T, output_dim),
    a bool mask (B, T) with at least one real token per input, an optional long time index (B, T)
    and pooled (B, output_dim); all values finite; gradients reach every trainable parameter that
    the output depends on; results do not depend on what else is in the batch.
    """
    assert spec.tiny_config is not None, f"{spec.name}: EncoderSpec.tiny_config is required for tests"
    assert spec.example_inputs is not None, f"{spec.name}: EncoderSpec.example_inputs is required for tests"
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    items = inputs if inputs is not None else spec.example_inputs(tmp_dir)
    assert len(items) >= 2, f"{spec.name}: example_inputs must give at least two inputs"
    media = [Media.of(x) for x in items]
    for m in media:
        assert mime_matches(m.mime_type, spec.mime_types), (
            f"{spec.name}: example input {m.name} has type {m.mime_type}, not one of {spec.mime_types}"
        )

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


def _check_output(spec: EncoderSpec, encoder: Encoder, out: EncoderOutput, batch_size: int) -> None:
    assert isinstance(out, EncoderOutput), f"{spec.name}: forward must return an EncoderOutput"
    f = out.features
    assert f.dim() == 3, f"{spec.name}: features must be (B, T, D), got shape {tuple(f.shape)}"
    assert f.shape[0] == batch_size, f"{spec.name}: batch size {f.shape[0]} != {batch_size}"
    assert f.shape[2] == encoder.output_dim, (
        f"{spec.name}: feature width {f.shape[2]} != output_dim {encoder.output_dim}"
    )
    assert f.shape[1] >= 1, f"{spec.name}: no tokens"
    assert torch.isfinite(f).all(), f"{spec.name}: features are not finite"
    assert out.mask.shape == f.shape[:2] and out.mask.dtype == torch.bool, f"{spec.name}: mask must be (B, T) bool"
    assert out.mask.any(dim=1).all(), f"{spec.name}: an input has no real token"
    if out.time_index is not None:
        assert out.time_index.shape == f.shape[:2], f"{spec.name}: time_index must be (B, T)"
        assert out.time_index.dtype == torch.long, f"{spec.name}: time_index must be long"
    if out.pooled is not None:
        assert out.pooled.shape == (batch_size, encoder.output_dim), f"{spec.name}: pooled must be (B, D)"
        assert torch.isfinite(out.pooled).all(), f"{spec.name}: pooled is not finite"
