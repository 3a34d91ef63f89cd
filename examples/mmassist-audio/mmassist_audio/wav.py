"""Reading PCM WAV files into mono float waveforms, and resampling them, with torch only.

Decoding uses Python's :mod:`wave` module, which reads uncompressed PCM (8, 16, 24 or 32-bit
integer samples). Anything else (float WAVs, compressed WAVs, truncated or corrupt files) is an
:class:`mmassist.core.UndecodableInputError` that names the file and says how to convert it.
"""

from __future__ import annotations

import io
import math
import wave

import torch
import torch.nn.functional as F

from mmassist.core.errors import UndecodableInputError
from mmassist.core.contract.media import Media

_CONVERT_HINT = "convert it to 16-bit PCM WAV (e.g. ffmpeg -i in.wav -c:a pcm_s16le out.wav)"
# Above this many taps per phase the exact polyphase kernel gets too big; use linear interpolation.
_MAX_SINC_PHASES = 2000


def read_wav(media: Media) -> tuple[torch.Tensor, int]:
    """Decode a PCM WAV input (a path or bytes) to a mono float waveform in [-1, 1] and its rate.

    :return: ``(wave, sample_rate)`` with ``wave`` of shape (N,), float32; channels are averaged.
    :raises UndecodableInputError: the input is empty, corrupt, truncated or not PCM.
    """
    source = str(media.path) if media.path is not None else io.BytesIO(media.read_bytes())
    try:
        with wave.open(source, "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            n_frames = f.getnframes()
            raw = f.readframes(n_frames)
    except Exception as e:  # wave raises many types on bad input (wave.Error, EOFError, RuntimeError...)
        raise UndecodableInputError(
            f"cannot decode {media.name} as a PCM WAV file ({type(e).__name__}: {e}); {_CONVERT_HINT}"
        ) from None
    if channels < 1 or width not in (1, 2, 3, 4) or rate <= 0:
        raise UndecodableInputError(
            f"{media.name} has an unsupported WAV layout ({channels} channels, {8 * width}-bit, "
            f"{rate} Hz); {_CONVERT_HINT}"
        )
    frame_bytes = channels * width
    raw = raw[: len(raw) - len(raw) % frame_bytes]  # a truncated file may end mid-frame
    if not raw:
        raise UndecodableInputError(f"{media.name} holds no audio samples; give a WAV file with sound in it")
    samples = _pcm_to_float(raw, width)  # (N * C,)
    return samples.view(-1, channels).mean(dim=1), rate  # (N, C) -> (N,)


def _pcm_to_float(raw: bytes, width: int) -> torch.Tensor:
    """Little-endian PCM bytes -> float32 samples in [-1, 1] (8-bit WAV is unsigned, the rest signed)."""
    buf = bytearray(raw)  # torch.frombuffer wants a writable buffer
    if width == 1:
        return (torch.frombuffer(buf, dtype=torch.uint8).float() - 128.0) / 128.0
    if width == 2:
        return torch.frombuffer(buf, dtype=torch.int16).float() / 32768.0
    if width == 3:
        b = torch.frombuffer(buf, dtype=torch.uint8).view(-1, 3).to(torch.int32)  # (N, 3) bytes
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = torch.where(value >= 1 << 23, value - (1 << 24), value)  # sign-extend 24 -> 32 bits
        return value.float() / float(1 << 23)
    return torch.frombuffer(buf, dtype=torch.int32).double().div(float(1 << 31)).float()


def resample(audio: torch.Tensor, orig_rate: int, new_rate: int, lowpass_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Resample a (N,) waveform with a Hann-windowed sinc filter (band-limited, like torchaudio's).

    The rates are reduced by their gcd; each of the ``new`` output phases gets its own kernel and
    one strided conv1d computes them all. For rate pairs that reduce badly (e.g. 22051 -> 16000)
    the kernel would be huge, so those fall back to linear interpolation.
    """
    if orig_rate == new_rate:
        return audio
    n = audio.shape[0]
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    target = math.ceil(new * n / orig)
    if max(orig, new) > _MAX_SINC_PHASES:
        return F.interpolate(audio[None, None], size=target, mode="linear", align_corners=False)[0, 0]

    base = min(orig, new) * rolloff  # cut-off below the lower Nyquist frequency
    width = math.ceil(lowpass_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, :] / orig  # (1, K)
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx  # (new, K)
    t = (t * base).clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    x = F.pad(audio[None, None].double(), (width, width + orig))  # (1, 1, N + pad)
    y = F.conv1d(x, kernel[:, None, :], stride=orig)  # (1, new, L)
    return y[0].t().reshape(-1)[:target].to(audio.dtype)  # interleave the phases -> (L * new,)


def encode_wav(samples: torch.Tensor, sample_rate: int, sample_width: int = 2) -> bytes:
    """Float samples in [-1, 1], (N,) mono or (N, C), as the bytes of a PCM WAV file.

    The inverse of :func:`read_wav`, for example inputs and tests.
    """
    frames = samples[:, None] if samples.dim() == 1 else samples  # (N, C)
    x = frames.double().clamp(-1.0, 1.0)
    if sample_width == 1:
        pcm = (x * 127.0 + 128.0).round().to(torch.uint8).flatten().numpy().tobytes()
    elif sample_width == 2:
        pcm = (x * 32767.0).round().to(torch.int16).flatten().numpy().tobytes()
    elif sample_width == 3:
        v = (x * float((1 << 23) - 1)).round().to(torch.int32).flatten()
        pcm = torch.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], dim=1).to(torch.uint8).numpy().tobytes()
    elif sample_width == 4:
        pcm = (x * float((1 << 31) - 1)).round().to(torch.int64).to(torch.int32).flatten().numpy().tobytes()
    else:
        raise ValueError(f"sample_width must be 1, 2, 3 or 4 bytes, got {sample_width}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(frames.shape[1])
        f.setsampwidth(sample_width)
        f.setframerate(sample_rate)
        f.writeframes(pcm)
    return buf.getvalue()
