"""Video sampling: our decoding path against two PyAV baselines, on a synthetic and a real clip.

Every variant ends the same way: K uniformly sampled frames (``plugins.video.sample_indices``) as
a (K, 3, 224, 224) float tensor, the short side resized and the centre cropped like timm's eval
transform.

- ``ours``: ``plugins.video.load_video``: PyAV, reference frames only between sampled frames, a
  seek only to a keyframe ahead, uint8 resize; its packet index built on each call, as on a
  video's first use.
- ``ours, index cached``: the same when the video was sampled before (a later epoch).
- ``decord get_batch``: a plain ``decord.VideoReader(path).get_batch(indices)`` (the plugin's
  fallback decoder), uint8 resize.
- ``pyav decode-all``: what most training code does (torchvision ``read_video``, PyTorchVideo):
  decode every frame with PyAV's defaults, convert each to RGB, stack, keep the sampled ones.
- ``pyav seek``: a careful keyframe seek per sampled frame: index the packets, seek to the
  keyframe before a sampled frame only when that skips decoding, decode forward, convert only
  the sampled frames; frame threads on.

The baselines resize with the fast uint8 resize, so they are as quick as they can be: the ratios
against them measure how frames are decoded, not our resize.
"""

from __future__ import annotations

import math
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from bench.common import Section, compare, log, ms, ratio

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "flipping_a_pancake.mkv"
FRAME_SIZE = (224, 224)
HEADLINE_FRAMES = 16


# -- the synthetic clip ---------------------------------------------------------------------------


def write_clip(path: Path, seconds: float = 10.0, fps: int = 30, width: int = 640, height: int = 360,
               preset: str = "medium") -> Path:
    """An H.264 clip with moving content: a textured scene panning left, a square and a disc moving.

    libx264 with its defaults (B-frames, a keyframe every 250 frames or at a scene cut), like real
    footage rather than an all-keyframe test file.
    """
    import av

    n = int(round(seconds * fps))
    pan = 3  # pixels per frame
    ys, xs = np.mgrid[0:height, 0:width + pan * n].astype(np.float32)
    scene = np.stack([128 + 70 * np.sin(xs / 37.0) * np.cos(ys / 23.0),
                      128 + 70 * np.sin((xs * 0.7 - ys * 0.5) / 29.0),
                      128 + 60 * np.cos(np.hypot(xs % 400 - 200, ys - height / 2) / 15.0)], axis=-1)
    scene += np.random.default_rng(0).normal(0, 6, size=scene.shape)
    scene = np.clip(scene, 0, 255).astype(np.uint8)
    side = height // 4
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"preset": preset, "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(n):
            frame = scene[:, pan * t: pan * t + width].copy()
            x0 = int((width - side) * t / n)
            y0 = int((height - side) / 2 + (height / 4) * math.sin(t / 15))
            frame[y0:y0 + side, x0:x0 + side] = (250, 240, 30)
            cy, cx = int(height * (0.2 + 0.6 * t / n)), width // 3
            frame[max(0, cy - side // 3): cy + side // 3, cx - side // 3: cx + side // 3] = (40, 90, 230)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


# -- the baselines --------------------------------------------------------------------------------


def pyav_decode_all(path: str, indices: Sequence[int]) -> np.ndarray:
    """torchvision ``read_video`` / PyTorchVideo style: every frame decoded and converted, then indexed."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)[list(indices)]


def pyav_seek(path: str, indices: Sequence[int]) -> np.ndarray:
    """A careful keyframe seek per sampled frame (see the module docstring); indexes the file first."""
    from mmassist.plugins.video import index_frames, read_frames

    index = index_frames(path)
    return np.stack(list(read_frames(path, indices, index, skip_unneeded=False)))


def decord_get_batch(path: str, indices: Sequence[int], num_threads: int = 0) -> np.ndarray:
    """A plain ``decord.VideoReader(...).get_batch(...)``."""
    import decord

    return decord.VideoReader(path, num_threads=num_threads).get_batch(list(indices)).asnumpy()


def _clear_index_cache() -> None:
    from mmassist.plugins import video as V

    V._index_frames_cached.cache_clear()


# -- the measurement ------------------------------------------------------------------------------


def _variants(path: Path, k: int) -> dict[str, Callable[[], torch.Tensor]]:
    from mmassist.core.contract.media import Media
    from mmassist.plugins import video as V

    media = Media.of(path)
    config = V.DecordVideoConfig(num_frames=k, max_frames=max(k, 32))
    index = V.index_frames(str(path))
    indices = V.sample_indices(len(index.pts), index.fps, "uniform", k, max_frames=max(k, 32)).indices

    def ours_cold():
        _clear_index_cache()  # as on a video's first sampling: the packet index is built
        return V.load_video(media, config, FRAME_SIZE).frames

    return {
        "ours": ours_cold,
        "ours, index cached": lambda: V.load_video(media, config, FRAME_SIZE).frames,
        "decord get_batch": lambda: V.resize_frames(torch.from_numpy(decord_get_batch(str(path), indices)),
                                                    FRAME_SIZE),
        "pyav decode-all": lambda: V.resize_frames(torch.from_numpy(pyav_decode_all(str(path), indices)), FRAME_SIZE),
        "pyav seek": lambda: V.resize_frames(torch.from_numpy(pyav_seek(str(path), indices)), FRAME_SIZE),
    }


def _max_pixel_difference(variants: dict[str, Callable[[], torch.Tensor]]) -> float:
    """Largest difference (in 1/255) of any variant's frames from the baseline's: all sample alike."""
    ref = variants["pyav seek"]()
    return max(float((fn() - ref).abs().max()) * 255 for fn in variants.values())


def _profile(path: Path, k: int, repeats: int) -> list[dict[str, Any]]:
    """Where the time of one sampling goes: indexing, decoding (per decoder, per thread count), resizing."""
    import decord

    from mmassist.plugins.video import index_frames, read_frames, resize_frames, sample_indices

    index = index_frames(str(path))
    indices = sample_indices(len(index.pts), index.fps, "uniform", k, max_frames=max(k, 32)).indices
    frames_u8 = torch.from_numpy(pyav_seek(str(path), indices))
    steps = {
        "PyAV packet index (demux, no decoding)": lambda: index_frames(str(path)),
        "decord open (builds its packet index)": lambda: len(decord.VideoReader(str(path))),
        "decord get_batch, threads auto": lambda: decord_get_batch(str(path), indices, 0),
        "decord get_batch, 1 thread": lambda: decord_get_batch(str(path), indices, 1),
        "decord get_batch, 2 threads": lambda: decord_get_batch(str(path), indices, 2),
        "PyAV careful seek, every frame decoded": lambda: pyav_seek(str(path), indices),
        "PyAV reference frames only (ours)": lambda: list(read_frames(str(path), indices, index)),
        "resize 640x360 -> 224, float": lambda: _float_resize(frames_u8, FRAME_SIZE),
        "resize 640x360 -> 224, uint8 (ours)": lambda: resize_frames(frames_u8, FRAME_SIZE),
    }
    timings = compare(steps, repeats=repeats, warmup=1)
    return [{"step": name, "wall ms": ms(t.median), "best wall ms": ms(t.best), "cpu ms": ms(t.cpu_median)}
            for name, t in timings.items()]


def _float_resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The resize the plugin used before: every native pixel to float, then an antialiased resize."""
    x = frames.permute(0, 3, 1, 2).float().div_(255)
    h, w = x.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    x = torch.nn.functional.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear",
                                        antialias=True, align_corners=False)
    top, left = (x.shape[-2] - size[0]) // 2, (x.shape[-1] - size[1]) // 2
    return x[:, :, top:top + size[0], left:left + size[1]]


def run(quick: bool = False) -> Section:
    section = Section("video", "Video sampling: K uniform frames -> (K, 3, 224, 224) float tensor")
    with tempfile.TemporaryDirectory(prefix="mmassist-bench-") as tmp:
        log("video: writing the 10 s test clip")
        preset = "veryfast" if quick else "medium"
        clip = write_clip(Path(tmp) / "clip.mp4", seconds=10.0, preset=preset)
        from mmassist.plugins.video import index_frames

        index = index_frames(str(clip))
        section.note(f"synthetic clip: 10 s, 640x360, 30 fps, H.264 (libx264 {preset}, crf 23, B-frames), "
                     f"{len(index.pts)} frames, keyframes at frames {[index.pts.index(p) for p in index.keyframe_pts]}")
        clips = [("10 s 640x360", clip)]
        if REAL_CLIP.is_file() and not quick:
            real = index_frames(str(REAL_CLIP))
            keys = [real.pts.index(p) for p in real.keyframe_pts]
            section.note(f"real clip: {REAL_CLIP.name}, {real.width}x{real.height}, {len(real.pts)} frames, "
                         f"H.264 without B-frames, keyframes at frames {keys}")
            clips.append((REAL_CLIP.name, REAL_CLIP))
        for name, path in clips:
            for k in ([HEADLINE_FRAMES] if quick else [8, 16, 32]):
                log(f"video: {name}, {k} frames")
                variants = _variants(path, k)
                diff = _max_pixel_difference(variants)
                headline = path == clip and k == HEADLINE_FRAMES
                t = compare(variants, repeats=1 if quick else (7 if headline else 3), warmup=0 if quick else 1)
                ours = t["ours"].median
                row: dict[str, Any] = {"clip": name, "frames": k}
                row.update({f"{v} ms": ms(t[v].median) for v in variants})
                row.update({"decode-all / ours": ratio(t["pyav decode-all"].median, ours),
                            "seek / ours": ratio(t["pyav seek"].median, ours),
                            "seek / ours cached": ratio(t["pyav seek"].median, t["ours, index cached"].median),
                            "seek / decord": ratio(t["pyav seek"].median, t["decord get_batch"].median),
                            "max diff /255": round(diff, 2)})
                section.row(**row)
                if headline:
                    section.keys["video_sampling_speedup_vs_pyav_decode_all"] = ratio(t["pyav decode-all"].median, ours)
                    section.keys["video_sampling_speedup_vs_pyav_seek"] = ratio(t["pyav seek"].median, ours)
                    section.keys["video_sampling_speedup_vs_decord_get_batch"] = ratio(
                        t["decord get_batch"].median, ours)
        if not quick:
            log("video: profile")
            section.tables["Where the time goes (10 s clip, 16 frames)"] = _profile(clip, HEADLINE_FRAMES, 3)
    section.note("ms: median wall time of interleaved repeats; every variant returns the same frames "
                 "(max diff: largest pixel difference from the PyAV baseline, in grey levels, from the uint8 "
                 "vs float resize)")
    return section
