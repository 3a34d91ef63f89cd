"""The video/decord plugin: frame sampling, decoding real files, bad media, and the encoder contract."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mmassist import core
from mmassist.core import schema
from mmassist.core.contract.testing import check_encoder
from mmassist.plugins import video as V
from mmassist.plugins.image import TimmImageConfig
from mmassist.plugins.video import (
    DecordVideoConfig,
    DecordVideoEncoder,
    load_video,
    pool_frame_tokens,
    sample_indices,
    write_test_video,
)

PANCAKE = Path(__file__).resolve().parents[2] / "shared/data/video/flipping_a_pancake.mkv"
REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES = 16


@pytest.fixture(scope="module")
def tiny_encoder():
    return DecordVideoEncoder(V.tiny_config()).eval()


def index_frames(num_frames: int = NUM_FRAMES, height: int = 48, width: int = 64) -> np.ndarray:
    """Flat grey frames whose brightness encodes their index: frame i is 16 * i + 8."""
    values = 16 * np.arange(num_frames) + 8
    return np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


def brightness(clip) -> list[float]:
    return (clip.frames.mean(dim=(1, 2, 3)) * 255).tolist()


def pyav_frames(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# -- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n, k, expected", [
    (100, 4, [12, 37, 62, 87]),          # centres of 4 segments of 25 frames
    (310, 8, [19, 58, 96, 135, 174, 213, 251, 290]),
    (8, 8, list(range(8))),
    (9, 4, [1, 3, 5, 7]),
    (3, 8, [0, 1, 2]),                   # shorter than num_frames: every frame once
    (1, 8, [0]),
])
def test_uniform_sampling_takes_segment_centres(n, k, expected):
    s = sample_indices(n, 10.0, "uniform", num_frames=k, max_frames=32)
    assert s.indices == expected
    assert s.timestamps == pytest.approx([i / 10.0 for i in expected])


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8, 9, 31, 32, 33, 100, 999, 10_007])
@pytest.mark.parametrize("k", [1, 3, 8, 32])
def test_uniform_indices_are_increasing_and_in_range(n, k):
    idx = sample_indices(n, 25.0, "uniform", num_frames=k, max_frames=32).indices
    assert len(idx) == min(n, k)
    assert all(0 <= i < n for i in idx)
    assert all(a < b for a, b in zip(idx, idx[1:]))


@pytest.mark.parametrize("n, video_fps, fps, max_frames, expected", [
    (300, 30.0, 1.0, 32, list(range(0, 300, 30))),
    (310, 30.0, 1.0, 32, list(range(0, 310, 30))),      # 10.33 s -> 11 frames, the last at 10 s
    (300, 30.0, 2.0, 32, list(range(0, 300, 15))),
    (10, 30.0, 1.0, 32, [0]),                           # shorter than one step
    (20, 10.0, 25.0, 32, list(range(20))),              # fps above the video's: every frame
    (100, 29.97, 1.0, 32, [0, 29, 59, 89]),             # fractional step
])
def test_fps_sampling_takes_one_frame_per_step(n, video_fps, fps, max_frames, expected):
    s = sample_indices(n, video_fps, "fps", fps=fps, max_frames=max_frames)
    assert s.indices == expected
    assert s.timestamps == pytest.approx([i / video_fps for i in expected])


def test_fps_sampling_over_the_cap_falls_back_to_uniform():
    s = sample_indices(3000, 30.0, "fps", fps=1.0, max_frames=32)  # 100 s would be 100 frames
    assert s.indices == sample_indices(3000, 30.0, "uniform", num_frames=32, max_frames=32).indices
    assert len(s.indices) == 32


def test_uniform_sampling_is_capped_by_max_frames():
    assert len(sample_indices(1000, 30.0, "uniform", num_frames=64, max_frames=16).indices) == 16


@pytest.mark.parametrize("args", [(0, 30.0), (10, 0.0), (10, float("nan")), (10, 30.0, "random")])
def test_sampling_rejects_invalid_arguments(args):
    with pytest.raises(ValueError):
        sample_indices(*args)


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"sampling": "random"}, "video.sampling"),
    ({"tokens_per_frame": 5}, "video.tokens_per_frame"),
    ({"num_frames": 40}, "video.num_frames"),
    ({"fps": 0.0}, "video.fps"),
    ({"max_frames": 0}, "video.max_frames"),
    ({"image_size": 8}, "video.image_size"),
    ({"image_size": 64, "backbone": TimmImageConfig(image_size=32)}, "video.image_size"),
    ({"tokens_per_frame": 4, "backbone": TimmImageConfig(pool_tokens=3)}, "video.backbone.pool_tokens"),
    ({"num_threads": -1}, "video.num_threads"),
    ({"max_duration_s": 0.0}, "video.max_duration_s"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(core.ConfigError, match=field.replace(".", r"\.")):
        DecordVideoConfig(**kwargs)


def test_every_config_field_has_help():
    assert all(schema.field_help(DecordVideoConfig).values())


def test_config_round_trips_and_refuses_unknown_nested_keys(host):
    spec = host.encoders.get("video/decord")
    cfg = DecordVideoConfig(backbone=TimmImageConfig(model_name="test_resnet"), sampling="fps", fps=2.0)
    data = schema.to_dict(cfg)
    assert spec.make_config(data) == cfg
    with pytest.raises(core.ConfigError, match="backbone.bogus"):
        spec.make_config({"backbone": {"bogus": 1}})


# -- registration -------------------------------------------------------------------------------


def test_registered_like_the_other_builtins(host):
    spec = host.encoders.get("video/decord")
    assert spec.modality == "video" and spec.config_cls is DecordVideoConfig
    assert set(V.VIDEO_MIME_TYPES) <= set(spec.mime_types)


def test_contract(host, tmp_path):
    check_encoder(host.encoders.get("video/decord"), tmp_path)


def test_importing_the_plugin_loads_no_decoder_or_model_library():
    code = "import sys, mmassist.plugins.video; print(sorted({'decord', 'av', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- decoding files written with PyAV -----------------------------------------------------------


@pytest.mark.parametrize("suffix, mime", [
    (".mp4", "video/mp4"),
    (".mkv", "video/x-matroska"),
    (".webm", "video/webm"),
    (".mov", "video/quicktime"),
    (".avi", "video/x-msvideo"),
])
def test_written_videos_decode_with_the_right_frames(tmp_path, suffix, mime):
    path = write_test_video(tmp_path / f"index{suffix}", index_frames(), fps=8)
    media = core.Media.of(path)
    assert media.mime_type == mime
    assert len(pyav_frames(path)) == NUM_FRAMES

    clip = load_video(media, DecordVideoConfig(num_frames=4))
    assert clip.num_video_frames == NUM_FRAMES and clip.video_fps == pytest.approx(8.0)
    assert clip.indices == [2, 6, 10, 14]
    assert clip.frames.shape == (4, 3, 48, 64) and (clip.width, clip.height) == (64, 48)
    assert brightness(clip) == pytest.approx([16 * i + 8 for i in clip.indices], abs=6)


def test_fps_sampling_on_a_real_file(tmp_path):
    path = write_test_video(tmp_path / "index.mp4", index_frames(), fps=8)
    clip = load_video(core.Media.of(path), DecordVideoConfig(sampling="fps", fps=2.0))
    assert clip.indices == [0, 4, 8, 12]
    assert clip.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert brightness(clip) == pytest.approx([16 * i + 8 for i in clip.indices], abs=6)


def test_frames_decoded_in_small_chunks_are_still_the_right_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(V, "_DECODE_BUDGET_BYTES", 1)  # one get_batch call per frame
    path = write_test_video(tmp_path / "index.webm", index_frames(), fps=8)
    clip = load_video(core.Media.of(path), DecordVideoConfig(num_frames=NUM_FRAMES))
    assert clip.indices == list(range(NUM_FRAMES))
    assert brightness(clip) == pytest.approx([16 * i + 8 for i in range(NUM_FRAMES)], abs=6)


def test_resize_crops_the_centre_like_timm():
    frames = torch.zeros(1, 40, 80, 3, dtype=torch.uint8)
    frames[:, :, 16:64] = 255  # white but for the outer fifth on each side
    out = V.resize_frames(frames, (32, 32))
    assert out.shape == (1, 3, 32, 32)
    assert out.min() > 0.95  # scaled to 32x64, of which the centre 32x32 is kept: all white


def test_bytes_and_path_inputs_give_the_same_pixels(tmp_path, tiny_encoder):
    path = write_test_video(tmp_path / "shapes.mkv", V.moving_shapes(10), fps=5)
    from_path = tiny_encoder.preprocess([core.Media.of(path)])
    from_bytes = tiny_encoder.preprocess([core.Media.of(path.read_bytes())])
    for key in from_path:
        torch.testing.assert_close(from_path[key], from_bytes[key])


def test_padded_frames_are_masked_and_do_not_change_results(tmp_path, tiny_encoder):
    short = write_test_video(tmp_path / "short.mp4", V.moving_shapes(3), fps=8)
    long = write_test_video(tmp_path / "long.mp4", V.moving_shapes(16, seed=3), fps=8)
    media = [core.Media.of(short), core.Media.of(long)]
    batch = tiny_encoder.preprocess(media)
    assert batch["pixel_values"].shape == (2, 4, 3, 64, 64)
    assert batch["frame_mask"].tolist() == [[True, True, True, False], [True] * 4]
    assert batch["frame_index"][0, :3].tolist() == [0, 1, 2]
    with torch.no_grad():
        out = tiny_encoder(**batch)
        alone = tiny_encoder(**tiny_encoder.preprocess(media[:1]))
    assert out.mask[0].tolist() == [True, True, True, False]
    assert out.time_index.tolist() == [[0, 1, 2, 0], [0, 1, 2, 3]]
    torch.testing.assert_close(out.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features[0, :3], alone.features[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_name", ["test_resnet", "test_vit"])
def test_tokens_per_frame_gives_k_by_k_tokens_per_frame(tmp_path, model_name):
    cfg = dataclasses.replace(V.tiny_config(), backbone=TimmImageConfig(model_name=model_name), tokens_per_frame=4)
    enc = DecordVideoEncoder(cfg).eval()
    path = write_test_video(tmp_path / "shapes.mp4", V.moving_shapes(8), fps=8)
    with torch.no_grad():
        out = enc.encode([path])
    assert out.features.shape == (1, 4 * 4, enc.output_dim)
    assert out.time_index[0].tolist() == [t for t in range(4) for _ in range(4)]


def test_pool_frame_tokens_pools_a_vit_grid_without_its_class_token():
    grid = torch.arange(16.0).view(1, 4, 4)  # one channel on a 4x4 patch grid
    tokens = torch.cat([torch.full((1, 1), 100.0), grid.flatten(1)], dim=1).unsqueeze(-1)  # (1, 17, 1)
    pooled = pool_frame_tokens(tokens, 4, num_prefix_tokens=1)
    assert pooled.squeeze().tolist() == [2.5, 4.5, 10.5, 12.5]


# -- the real clip ------------------------------------------------------------------------------


@pytest.mark.skipif(not PANCAKE.is_file(), reason=f"shared clip {PANCAKE} is not on this machine")
def test_real_clip_counts_seeks_and_encodes(tiny_encoder):
    reference = pyav_frames(PANCAKE)
    media = core.Media.of(PANCAKE)
    clip = load_video(media, DecordVideoConfig())  # native size
    assert clip.num_video_frames == len(reference) == 310
    assert clip.video_fps == pytest.approx(30.0)
    assert clip.indices == [19, 58, 96, 135, 174, 213, 251, 290]
    assert clip.frames.shape == (8, 3, 240, 426)
    for i, frame in zip(clip.indices, clip.frames):  # seeking lands on exactly these frames
        decoded = (frame.permute(1, 2, 0) * 255).round().numpy()
        assert np.abs(decoded - reference[i]).mean() < 2.0, f"frame {i}"

    fps_clip = load_video(media, DecordVideoConfig(sampling="fps", fps=1.0))
    assert fps_clip.indices == list(range(0, 310, 30))

    batch = tiny_encoder.preprocess([media])
    assert batch["pixel_values"].shape == (1, 4, 3, 64, 64)
    assert batch["timestamps"][0].tolist() == pytest.approx([i / 30 for i in [38, 116, 193, 271]])
    with torch.no_grad():
        out = tiny_encoder(**batch)
    assert out.features.shape == (1, 4, tiny_encoder.output_dim)
    assert out.pooled.shape == (1, tiny_encoder.output_dim)


# -- bad media ----------------------------------------------------------------------------------


def _good_mp4(tmp_path, **options) -> bytes:
    return write_test_video(tmp_path / "good.mp4", V.moving_shapes(16), fps=8, options=options).read_bytes()


def _bad_files(tmp_path):
    rng = np.random.default_rng(0)
    good = _good_mp4(tmp_path)
    fast = write_test_video(tmp_path / "fast.mp4", rng.integers(0, 256, (40, 48, 64, 3), dtype=np.uint8),
                            fps=8, options={"movflags": "faststart"}).read_bytes()
    return {
        "empty.mp4": b"",
        "truncated.mp4": good[: len(good) // 2],
        "truncated_faststart.mp4": fast[: len(fast) // 2],
        "random.mp4": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text.mp4": b"this is not a video\n" * 20,
    }


@pytest.mark.parametrize("name", ["empty.mp4", "truncated.mp4", "truncated_faststart.mp4", "random.mp4",
                                  "text.mp4"])
def test_bad_files_are_undecodable_input(tmp_path, host, tiny_encoder, name):
    path = tmp_path / name
    path.write_bytes(_bad_files(tmp_path)[name])
    with pytest.raises(core.UndecodableInputError, match=name):
        spec, media = host.route(path)
        assert spec.name == "video/decord"
        tiny_encoder.preprocess([media])


@pytest.mark.parametrize("name", ["truncated.mp4", "truncated_faststart.mp4", "random.mp4", "text.mp4"])
def test_bad_bytes_are_undecodable_input(tmp_path, tiny_encoder, name):
    media = core.Media("video/mp4", data=_bad_files(tmp_path)[name], name="<upload>")
    with pytest.raises(core.UndecodableInputError, match="<upload>"):
        tiny_encoder.preprocess([media])


def test_unsniffable_bytes_are_refused_by_the_router(host):
    with pytest.raises(core.UnsupportedInputError):
        host.route(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())


def test_an_image_named_mp4_goes_to_the_image_encoder_not_here(tmp_path, host, tiny_encoder):
    from PIL import Image

    path = tmp_path / "photo.mp4"
    Image.new("RGB", (16, 16)).save(path, format="PNG")
    assert host.route(path)[0].name == "image/timm"
    with pytest.raises(core.UnsupportedInputError):
        host.route(path, candidates=["video/decord"])
    with pytest.raises(core.UndecodableInputError):  # forced to decode it anyway
        tiny_encoder.preprocess([core.Media("video/mp4", path=path, name=str(path))])


@pytest.mark.parametrize("limit, value, match", [
    ("max_pixels_per_frame", 1000, "64x48"),
    ("max_video_frames", 10, "16 frames"),
    ("max_duration_s", 1.0, "lasts 2 s"),
])
def test_oversized_videos_are_refused(tmp_path, limit, value, match):
    path = write_test_video(tmp_path / "big.mp4", index_frames(), fps=8)
    cfg = DecordVideoConfig(**{limit: value})
    with pytest.raises(core.UndecodableInputError, match=f"{match}.*{limit}"):
        load_video(core.Media.of(path), cfg)


def test_corrupt_bytes_never_crash_the_process(tmp_path):
    """Corrupt bytes go through decord in a child process: each decodes or is UndecodableInputError.

    An MP4/MOV whose sample-size table claims one ~10 MB packet makes decord's in-memory reader
    (VideoReader(io.BytesIO(...))) segfault, where its file reader raises; so the plugin writes
    bytes to a temporary file. Random mutations of other containers ride along.
    """
    for suffix in (".mp4", ".mov", ".avi", ".webm"):
        write_test_video(tmp_path / f"src{suffix}", V.moving_shapes(16), fps=8)
    script = textwrap.dedent(f"""
        import random, struct
        from pathlib import Path
        from mmassist import core
        from mmassist.plugins.video import DecordVideoConfig, load_video
        cfg = DecordVideoConfig(num_frames=4, num_threads=1)
        sources = sorted(Path({str(tmp_path)!r}).glob("src.*"))

        def decode(data, name):
            try:
                load_video(core.Media("video/mp4", data=bytes(data), name=name), cfg)
                return "ok"
            except core.UndecodableInputError:
                return "undecodable"

        for src in sources:
            data = bytearray(src.read_bytes())
            stsz = data.find(b"stsz")
            if stsz >= 0:  # sample 8 claims ~10 MB
                data[stsz + 16 + 4 * 8 + 1] = 0xA4
                print(src.suffix, decode(data, src.name))
        rng = random.Random(0)
        for trial in range(40):
            src = sources[trial % len(sources)]
            data = bytearray(src.read_bytes())
            if trial % 3 == 0:
                data = data[: rng.randrange(1, len(data))]
            else:
                for _ in range(rng.randint(1, 20)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            decode(data, src.name)
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"exit code {out.returncode} (-11 = segfault): {out.stderr[-2000:]}"
    assert out.stdout.split() == [".mov", "undecodable", ".mp4", "undecodable", "done"]


def test_write_test_video_refuses_odd_frame_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_test_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
