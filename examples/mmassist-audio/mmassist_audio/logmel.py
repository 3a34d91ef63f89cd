"""``audio/logmel``: WAV -> log-mel spectrogram -> a small trainable conv front end, like Whisper's.

Preprocessing (CPU, no parameters): decode the WAV to mono, resample to ``sample_rate``, cap at
``max_seconds``, then a power STFT (Hann window) through an HTK mel filterbank, log10, clipped to
8 decades below the clip's peak and scaled to about [-1, 1] (Whisper's normalisation).

Model: Conv1d(n_mels -> hidden, k=3) + GELU, Conv1d(hidden -> hidden, k=3, stride 2) + GELU,
LayerNorm: one token per two mel frames (20 ms at the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmassist.core.schema import check_range, help_field
from mmassist.core.contract.encoders import Encoder, EncoderOutput, pad_sequences
from mmassist.core.errors import ConfigError
from mmassist.core.contract.media import Media
from mmassist_audio.wav import encode_wav, read_wav, resample

WAV_MIME_TYPES = ("audio/wav", "audio/x-wav")


@dataclass
class LogMelAudioConfig:
    """How WAV audio becomes log-mel features and then feature tokens."""

    sample_rate: int = help_field(16000, help="resample all audio to this rate (Hz)")
    max_seconds: float = help_field(30.0, help="keep at most this many seconds from the start of each clip")
    n_mels: int = help_field(64, help="number of mel bands")
    n_fft: int = help_field(400, help="STFT window and FFT size in samples (400 = 25 ms at 16 kHz)")
    hop_length: int = help_field(160, help="STFT hop in samples (160 = 10 ms at 16 kHz)")
    f_min: float = help_field(0.0, help="lowest frequency of the mel filterbank (Hz)")
    f_max: float | None = help_field(None, help="highest frequency of the mel filterbank (Hz); "
                                                "default: half the sample rate")
    hidden_dim: int = help_field(256, help="width of the conv front end = the encoder's output_dim")

    def __post_init__(self):
        check_range("audio.sample_rate", self.sample_rate, 1000, 384_000)
        check_range("audio.max_seconds", self.max_seconds, 0, 3600, lo_open=True)
        check_range("audio.n_mels", self.n_mels, 1, 512)
        check_range("audio.n_fft", self.n_fft, 16, 16384)
        check_range("audio.hop_length", self.hop_length, 1, self.n_fft)
        check_range("audio.f_min", self.f_min, 0)
        if self.f_max is not None:
            check_range("audio.f_max", self.f_max, hi=self.sample_rate / 2)
        if self.f_min >= self.top_frequency:
            raise ConfigError(f"audio.f_min={self.f_min!r} must be below the top of the filterbank "
                              f"({self.top_frequency:g} Hz: audio.f_max, or half of audio.sample_rate)")
        check_range("audio.hidden_dim", self.hidden_dim, 1, 16384)

    @property
    def top_frequency(self) -> float:
        return self.sample_rate / 2 if self.f_max is None else self.f_max


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """The HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK mel filters, (n_fft // 2 + 1, n_mels), unnormalised (peak 1).

    :raises ConfigError: when some band catches no FFT bin (too many mels for this n_fft).
    """
    bin_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    mel_pts = torch.linspace(float(hz_to_mel(torch.tensor(f_min))), float(hz_to_mel(torch.tensor(f_max))),
                             n_mels + 2, dtype=torch.float64)
    hz_pts = mel_to_hz(mel_pts)  # (n_mels + 2,) band edges and centres
    gaps = hz_pts[1:] - hz_pts[:-1]  # (n_mels + 1,)
    slopes = hz_pts[None, :] - bin_hz[:, None]  # (F, n_mels + 2)
    rising = -slopes[:, :-2] / gaps[:-1]
    falling = slopes[:, 2:] / gaps[1:]
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (F, n_mels)
    empty = (filters.max(dim=0).values == 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"audio.n_mels={n_mels} is too many for audio.n_fft={n_fft} between {f_min:g} and {f_max:g} Hz: "
            f"mel bands {empty[:5]} catch no FFT bin; lower n_mels or raise n_fft"
        )
    return filters.float()


class LogMelAudioEncoder(Encoder):
    """Audio encoder: log-mel features (no parameters) through a two-layer conv front end."""

    def __init__(self, config: LogMelAudioConfig):
        super().__init__()
        self.config = config
        self.output_dim = config.hidden_dim
        # Plain tensors, not buffers: preprocessing stays on the CPU when the model moves.
        self.mel_filters = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels,
                                          config.f_min, config.top_frequency)  # (F, n_mels)
        self.window = torch.hann_window(config.n_fft)
        self.conv1 = nn.Conv1d(config.n_mels, config.hidden_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.hidden_dim, config.hidden_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(config.hidden_dim)

    # -- preprocessing (CPU) ----------------------------------------------------------------

    def load(self, media: Media) -> torch.Tensor:
        """A WAV input -> (N,) mono float waveform at ``sample_rate``, at most ``max_seconds`` long."""
        audio, rate = read_wav(media)
        audio = audio[: math.ceil(self.config.max_seconds * rate)]  # cut first: less to resample
        audio = resample(audio, rate, self.config.sample_rate)
        return audio[: int(self.config.max_seconds * self.config.sample_rate)]

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(N,) waveform -> (n_mels, 1 + N // hop_length) normalised log-mel spectrogram."""
        cfg = self.config
        if audio.shape[0] <= cfg.n_fft // 2:  # reflect padding needs more samples than half a window
            audio = F.pad(audio, (0, cfg.n_fft // 2 + 1 - audio.shape[0]))
        spec = torch.stft(audio, cfg.n_fft, cfg.hop_length, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)  # (F, frames)
        power = spec.abs() ** 2
        mel = self.mel_filters.t() @ power  # (n_mels, frames)
        log_mel = torch.log10(mel.clamp(min=1e-10))
        log_mel = torch.maximum(log_mel, log_mel.max() - 8.0)  # 80 dB below the peak is silence
        return (log_mel + 4.0) / 4.0

    def preprocess(self, items: Sequence[Media]) -> dict[str, torch.Tensor]:
        mels = [self.log_mel(self.load(m)).t() for m in items]  # each (T_i, n_mels)
        padded, mask = pad_sequences(mels)  # (B, T, n_mels), (B, T)
        return {"mel": padded.transpose(1, 2).contiguous(), "mel_lengths": mask.sum(dim=1)}

    # -- model ------------------------------------------------------------------------------

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> EncoderOutput:
        """``mel`` (B, n_mels, T) right-padded, ``mel_lengths`` (B,) -> tokens (B, (T + 1) // 2, D)."""
        in_mask = lengths_to_mask(mel_lengths, mel.shape[-1])[:, None, :]  # (B, 1, T)
        # Zero the padding before each conv, so a clip's tokens are the same alone or in a batch:
        # the convs then see exactly the zeros their own padding would add at the clip's end.
        x = F.gelu(self.conv1(mel * in_mask)) * in_mask  # (B, D, T)
        x = F.gelu(self.conv2(x))  # (B, D, T2)
        lengths = (mel_lengths - 1) // 2 + 1  # conv2: k=3, stride 2, padding 1
        mask = lengths_to_mask(lengths, x.shape[-1])  # (B, T2)
        features = self.norm(x.transpose(1, 2)) * mask[..., None]  # (B, T2, D)
        pooled = features.sum(dim=1) / lengths[:, None].to(features.dtype)  # (B, D) masked mean
        return EncoderOutput(features=features, mask=mask, pooled=pooled)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True for the first ``length`` positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def tiny_config() -> LogMelAudioConfig:
    return LogMelAudioConfig(n_mels=16, hidden_dim=32)


def sine(seconds: float, sample_rate: int, hz: float, channels: int = 1) -> torch.Tensor:
    """A 0.5-amplitude sine tone, (N, channels) float; channel c is phase-shifted by c * pi / 4."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return torch.stack([0.5 * torch.sin(2 * math.pi * hz * t + c * math.pi / 4) for c in range(channels)], dim=1)


def example_inputs(tmp_dir: Path) -> list[Any]:
    """A 0.5 s 16-bit mono 16 kHz WAV file and 0.8 s of 16-bit stereo 22.05 kHz WAV bytes."""
    path = Path(tmp_dir) / "tone_440hz.wav"
    path.write_bytes(encode_wav(sine(0.5, 16000, 440.0), 16000))
    return [path, encode_wav(sine(0.8, 22050, 660.0, channels=2), 22050)]


def looks_like_wav(media: Media) -> bool:
    """Whether the input's first bytes are a RIFF/WAVE header (reads 12 bytes, not the whole file)."""
    if media.data is not None:
        head = media.data[:12]
    elif media.path is not None:
        with media.path.open("rb") as f:
            head = f.read(12)
    else:
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"
