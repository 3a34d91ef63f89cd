"""Tests of mmassist-audio: the shared encoder contract, then the WAV reader, resampler and features.

Run after ``pip install -e .`` (the host finds the plugin through its entry point, as users' will).
"""

from __future__ import annotations

import dataclasses
import math
import struct

import pytest
import torch

from mmassist import core
from mmassist.core.schema import field_help
from mmassist.core.contract.testing import check_encoder
from mmassist_audio.logmel import LogMelAudioConfig, LogMelAudioEncoder, mel_filterbank, mel_to_hz, sine
from mmassist_audio.wav import encode_wav, read_wav, resample


@pytest.fixture(scope="module")
def host():
    return core.Host()


@pytest.fixture(scope="module")
def spec(host):
    assert "audio/logmel" in host.encoders, (
        f"audio/logmel is not registered (failed plugins: {host.failed_plugins}); "
        "install this distribution first: pip install -e ."
    )
    return host.encoders.get("audio/logmel")


@pytest.fixture(scope="module")
def tiny(spec):
    return spec.create(spec.tiny_config()).eval()


def test_contract(spec, tmp_path):
    out = check_encoder(spec, tmp_path)
    # 0.5 s and 0.8 s at 16 kHz -> 51 and 81 mel frames -> 26 and 41 tokens.
    assert out.mask.sum(dim=1).tolist() == [26, 41]


def test_registered_through_the_entry_point(spec):
    assert (spec.distribution, spec.version, spec.plugin) == ("mmassist-audio", "0.1.0", "audio")


# -- reading WAV --------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_read_wav_pcm_widths_to_mono(width, channels):
    samples = sine(0.1, 8000, 300.0, channels=channels)  # (N, C)
    audio, rate = read_wav(core.Media.of(encode_wav(samples, 8000, sample_width=width)))
    assert rate == 8000 and audio.dtype == torch.float32 and audio.shape == (samples.shape[0],)
    step = 2.0 / 2 ** (8 * width)  # one quantisation step
    torch.testing.assert_close(audio, samples.mean(dim=1).float(), atol=2 * step + 1e-6, rtol=0)


def test_read_wav_path_and_bytes_agree(tmp_path):
    data = encode_wav(sine(0.2, 16000, 440.0), 16000)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    from_path, _ = read_wav(core.Media.of(path))
    from_bytes, _ = read_wav(core.Media.of(data))
    torch.testing.assert_close(from_path, from_bytes)


def _wav_with_format(format_tag: int, bits: int, data: bytes, channels: int = 1, rate: int = 16000) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("case", ["float32", "no_samples", "corrupt", "cut_header"])
def test_bad_wavs_are_undecodable_with_the_file_name(case, tiny, tmp_path):
    good = encode_wav(sine(0.1, 16000, 440.0), 16000)
    data = {
        "float32": _wav_with_format(3, 32, struct.pack("<4f", 0.1, 0.2, 0.3, 0.4)),
        "no_samples": encode_wav(torch.zeros(0, 1), 16000),
        "corrupt": b"RIFF\x10\x00\x00\x00WAVE" + b"\xff" * 40,
        "cut_header": good[:30],
    }[case]
    path = tmp_path / f"{case}.wav"
    path.write_bytes(data)
    with pytest.raises(core.UndecodableInputError, match="WAV") as info:
        tiny.encode([path])
    assert str(path) in str(info.value)


def test_empty_input_is_undecodable(tiny):
    with pytest.raises(core.UndecodableInputError, match="empty"):
        tiny.encode([b""])


def test_truncated_data_keeps_whole_frames():
    data = encode_wav(sine(0.1, 16000, 440.0, channels=2), 16000)
    audio, _ = read_wav(core.Media.of(data[:-3]))  # cut in the middle of the last stereo frame
    assert audio.shape == (1599,)


# -- resampling and features ------------------------------------------------------------------


@pytest.mark.parametrize("orig, new", [(22050, 16000), (8000, 16000), (48000, 16000), (22051, 16000)])
def test_resample_keeps_a_tone(orig, new):
    audio = sine(0.5, orig, 440.0)[:, 0].float()
    out = resample(audio, orig, new)
    assert out.shape == (math.ceil(audio.shape[0] * new / orig),)
    expected = sine(0.5 * 2, new, 440.0)[: out.shape[0], 0].float()
    edge = new // 50  # the filter sees zeros beyond both ends
    tol = 1e-3 if max(orig, new) // math.gcd(orig, new) <= 2000 else 2e-2  # exact sinc vs linear fallback
    torch.testing.assert_close(out[edge:-edge], expected[edge:-edge], atol=tol, rtol=0)


def test_resample_same_rate_is_identity():
    audio = torch.randn(100)
    assert resample(audio, 16000, 16000) is audio


def test_mel_filterbank_shape_and_band_centres():
    fb = mel_filterbank(16000, 400, 64, 0.0, 8000.0)  # (F, n_mels)
    assert fb.shape == (201, 64)
    assert (fb >= 0).all() and (fb.max(dim=0).values > 0).all() and fb.max() <= 1.0
    peak_hz = fb.argmax(dim=0).float() * 16000 / 400
    assert (peak_hz[1:] >= peak_hz[:-1]).all(), "band centres must rise"
    centres = mel_to_hz(torch.linspace(0, 2595 * math.log10(1 + 8000 / 700), 66, dtype=torch.float64))[1:-1]
    assert (peak_hz.double() - centres).abs().max() <= 40.0  # within one FFT bin


def test_log_mel_of_a_tone_peaks_at_its_band(tiny):
    cfg = tiny.config
    mel = tiny.log_mel(sine(0.3, 16000, 1000.0)[:, 0].float())  # (n_mels, frames)
    assert mel.shape == (cfg.n_mels, 1 + 4800 // cfg.hop_length)
    fb = mel_filterbank(16000, cfg.n_fft, cfg.n_mels, 0.0, 8000.0)
    assert mel.mean(dim=1).argmax() == fb[1000 * cfg.n_fft // 16000].argmax()


def test_max_seconds_caps_the_clip(spec):
    enc = spec.create(dataclasses.replace(spec.tiny_config(), max_seconds=0.25))
    batch = enc.preprocess([core.Media.of(encode_wav(sine(1.0, 22050, 440.0), 22050))])
    assert batch["mel_lengths"].tolist() == [1 + 4000 // 160]


def test_padding_does_not_leak(tiny):
    clips = [encode_wav(sine(s, 16000, 440.0), 16000) for s in (0.31, 0.05, 0.9)]
    with torch.no_grad():
        together = tiny.encode(clips)
        for i, clip in enumerate(clips):
            alone = tiny.encode([clip])
            n = int(alone.mask.sum())
            assert int(together.mask[i].sum()) == n
            torch.testing.assert_close(together.features[i, :n], alone.features[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together.pooled[i], alone.pooled[0], atol=1e-5, rtol=1e-5)
            assert together.features[i, n:].abs().sum() == 0


# -- config -----------------------------------------------------------------------------------


def test_every_config_field_has_help():
    assert all(field_help(LogMelAudioConfig).values())


@pytest.mark.parametrize("field, value", [
    ("sample_rate", 10), ("max_seconds", 0.0), ("n_mels", 0), ("n_fft", 8), ("hop_length", 401),
    ("f_max", 9000.0), ("f_min", 8000.0), ("hidden_dim", 0),
])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(core.ConfigError, match=f"audio.{field}"):
        LogMelAudioConfig(**{field: value})


def test_config_from_dict_is_strict(spec):
    assert spec.make_config({"n_mels": 32}).n_mels == 32
    with pytest.raises(core.ConfigError, match="n_mel"):
        spec.make_config({"n_mel": 32})


def test_too_many_mels_for_the_fft_is_a_config_error():
    with pytest.raises(core.ConfigError, match="audio.n_mels=128"):
        LogMelAudioEncoder(LogMelAudioConfig(n_mels=128, n_fft=64, hop_length=16))


# -- routing ----------------------------------------------------------------------------------


def test_routes_wav_files_and_generic_bytes_holding_wav(host, tmp_path):
    data = encode_wav(sine(0.1, 16000, 440.0), 16000)
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    assert host.route(path)[0].name == "audio/logmel"
    upload = core.Media("application/octet-stream", data=data, name="upload")
    assert host.route(upload)[0].name == "audio/logmel"  # only our route_input hook claims this
    with pytest.raises(core.UnsupportedInputError):
        host.route(core.Media("application/octet-stream", data=b"\x00" * 64, name="junk"))
    with pytest.raises(core.UnsupportedInputError):  # not ours to claim when we are not a candidate
        host.route(upload, candidates=["image/timm"])
