"""mmassist-audio: the ``audio/logmel`` encoder as a third-party mmassist plugin.

The host finds this module through the entry point ``audio = "mmassist_audio"`` in the group
``mmassist`` (see pyproject.toml) and calls the hooks below. Importing it is cheap: ``mmassist.core``
is lazy (it loads no model code), this package imports nothing beyond torch and the standard library,
and the torch-side work (the mel filterbank, the conv front end) happens only when
``EncoderSpec.build`` creates the encoder.
"""

from __future__ import annotations

from mmassist import core
from mmassist_audio.logmel import (
    WAV_MIME_TYPES,
    LogMelAudioConfig,
    LogMelAudioEncoder,
    example_inputs,
    looks_like_wav,
    tiny_config,
)

__version__ = "0.1.0"
ENCODER_NAME = "audio/logmel"
# Types a WAV may arrive with when its sender did not know better (uploads, HTTP clients).
_GENERIC_MIME_TYPES = ("application/octet-stream", "audio/x-wav", "audio/wave", "audio/vnd.wave")

__all__ = ["LogMelAudioConfig", "LogMelAudioEncoder", "register_encoders", "route_input"]


@core.hookimpl
def register_encoders(register):
    register(core.EncoderSpec(
        name=ENCODER_NAME,
        modality="audio",
        mime_types=WAV_MIME_TYPES,
        config_cls=LogMelAudioConfig,
        build=LogMelAudioEncoder,
        description="PCM WAV -> log-mel spectrogram -> two strided Conv1d layers (Whisper-style)",
        tiny_config=tiny_config,
        example_inputs=example_inputs,
    ))


@core.hookimpl
def route_input(media, candidates):
    """Claim inputs labelled with a generic type whose bytes are a RIFF/WAVE file."""
    if media.mime_type not in _GENERIC_MIME_TYPES or not any(c.name == ENCODER_NAME for c in candidates):
        return None
    return ENCODER_NAME if looks_like_wav(media) else None
