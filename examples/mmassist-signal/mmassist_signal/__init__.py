"""mmassist-signal: the ``signal/conv1d`` encoder, for a modality mmassist's core has never heard of.

A *signal* is a multichannel time series (an accelerometer, a heart-rate strap, a sensor log): a ``.csv``
file (one row per sample, one column per channel, an optional header) or a NumPy ``.npy`` array of shape
(samples, channels). The plugin declares those file types (``extensions`` and the ``.npy`` magic bytes), so
the host routes them here in chat, captioning, data files and the web app's uploads, with no
``mimetypes.add_type`` and no change to mmassist. Everything else follows the conventions every modality
shares: the placeholder ``<signal>``, the config section ``encoders.signal``, the content part
``{"type": "signal", "signal": "walk.csv"}`` and a ``"signal"`` field in LLaVA-style records.

Importing it is cheap: numpy and torch work happens in the encoder, built by ``EncoderSpec.build``.
"""

from __future__ import annotations

from mmassist import core
from mmassist_signal.encoder import (
    EXTENSIONS,
    MAGIC,
    MIME_TYPES,
    SignalConfig,
    SignalEncoder,
    example_inputs,
    tiny_config,
)

__version__ = "0.1.0"
ENCODER_NAME = "signal/conv1d"

__all__ = ["SignalConfig", "SignalEncoder", "register_encoders"]


@core.hookimpl
def register_encoders(register):
    register(core.EncoderSpec(
        name=ENCODER_NAME,
        modality="signal",
        mime_types=MIME_TYPES,
        extensions=EXTENSIONS,
        magic=MAGIC,
        config_cls=SignalConfig,
        build=SignalEncoder,
        description="multichannel time series (.csv, .npy) -> two strided Conv1d layers",
        tiny_config=tiny_config,
        example_inputs=example_inputs,
    ))
