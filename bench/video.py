"""Video sampling: our decoding path against two PyAV baselines, on a synthetic and a real clip.

Every path ends the same way: K uniformly sampled frames (``plugins.video.sample_indices``) as a
(K, 3, 224, 224) float tensor, short side resized and centre-cropped like timm's eval transform.

- ``plugin``: ``plugins.video.load_video`` as it ships (decord ``get_batch``, float resize).
- ``plugin+u8``: the same with the resize done on uint8 frames (the first proposed change).
- ``proposed``: :func:`load_video_fast`, the proposed decoding path (PyAV, reference frames only
  between sampled frames, one seek per needed keyframe) with the uint8 resize.
- ``pyav decode-all``: what most training code does (torchvision ``read_video``, PyTorchVideo):
  decode every frame with PyAV's defaults, convert each to RGB, stack, keep the sampled ones.
- ``pyav seek``: a careful keyframe seek per sampled frame: seek to the keyframe before a sampled
  frame only when that skips decoding, decode forward, convert only the sampled frames; frame
  threads on.

The baselines resize with the fast uint8 resize, so they are as quick as they can be; the ratios
against them measure decoding strategy, not our resize.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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


# -- the proposed resize --------------------------------------------------------------------------


def resize_frames_uint8(frames: torch.Tensor, size: tuple[int, int], crop_pct: float = 1.0,
                        interpolation: str = "bilinear") -> torch.Tensor:
    """``plugins.video.resize_frames`` computed on uint8 pixels: the same geometry, 5-30x faster.

    PyTorch has a vectorised antialiased uint8 kernel for channels-last images (what torchvision's
    v2 transforms use); the float path converts every native-size pixel to float first. Outputs
    differ by rounding: at most 1/255 for bilinear, a few /255 at sharp edges for bicubic.
    """
    h, w = size
    x = frames.permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W), channels-last memory, no copy
    in_h, in_w = x.shape[-2:]
    if h == w:
        short = math.floor(h / crop_pct)
        scale = short / min(in_h, in_w)
        scaled = (max(short, round(in_h * scale)), max(short, round(in_w * scale)))
    else:
        scaled = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    x = torch.nn.functional.interpolate(x, size=scaled, mode=mode, antialias=True, align_corners=False)
    top, left = (scaled[0] - h) // 2, (scaled[1] - w) // 2
    x = x[:, :, top:top + h, left:left + w]  # (N, 3, h, w) uint8
    return x.contiguous().float().div_(255)


# -- the proposed decoder -------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameIndex:
    """Where a video's frames are: presentation timestamps in display order, keyframe timestamps."""

    pts: list[int]
    keyframe_pts: list[int]
    fps: float
    width: int
    height: int


def index_video(path: str) -> FrameIndex:
    """Read every packet header of the video stream (no decoding): frame i = the i-th smallest pts.

    That is how decord numbers frames too, so indices, counts and frames agree with it.
    """
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise ValueError("a packet has no timestamp")
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
    pts.sort()
    keys.sort()
    if pts and (not keys or keys[0] > pts[0]):
        keys.insert(0, pts[0])  # a stream that starts without a flagged keyframe still decodes from its start
    return FrameIndex(pts, keys, fps, width, height)


def read_frames(path: str, indices: Sequence[int], index: FrameIndex | None = None,
                num_threads: int = 0, skip_unneeded: bool = True) -> np.ndarray:
    """Decode frames ``indices`` (display order) -> (N, H, W, 3) uint8 RGB.

    Decodes as little as it can and never an extra RGB conversion:

    - seeks to the keyframe before a wanted frame only when that keyframe lies past the decoder's
      position (a backward seek only for an earlier frame);
    - between wanted frames, tells FFmpeg to skip non-reference frames (``skip_frame=NONREF``): no
      later frame depends on them, so the wanted frames come out bit-identical;
    - converts only the wanted frames to RGB.

    ``num_threads``: FFmpeg decoding threads (0 = as many as cores, frame and slice threads).
    ``skip_unneeded=False`` decodes every frame on the way (the careful-seek baseline).
    """
    import av

    index = index or index_video(path)
    wanted = [index.pts[i] for i in indices]
    todo = sorted(set(wanted))
    got: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = num_threads
        codec = stream.codec_context
        segment_key = None  # the keyframe the decoder started from
        last = None  # pts of the last frame the decoder gave back
        i = 0
        while i < len(todo):
            target = todo[i]
            key = index.keyframe_pts[bisect.bisect_right(index.keyframe_pts, target) - 1]
            if segment_key is None or (last is not None and target <= last) or \
                    (key != segment_key and (last is None or key > last)):
                container.seek(key, stream=stream, backward=True, any_frame=False)
                segment_key, last = key, None
            remaining = set(todo[i:])
            reached = False
            for packet in container.demux(stream):
                if skip_unneeded:
                    codec.skip_frame = "DEFAULT" if packet.pts in remaining else "NONREF"
                for frame in packet.decode():
                    last = frame.pts
                    if frame.pts in remaining and frame.pts not in got:
                        got[frame.pts] = frame.to_ndarray(format="rgb24")
                    reached = reached or frame.pts >= target
                if reached:
                    break
            if target not in got:
                raise ValueError(f"frame {indices[wanted.index(target)]} was not decoded")
            while i < len(todo) and todo[i] in got:
                i += 1
    return np.stack([got[p] for p in wanted])


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def load_video_fast(media, config, frame_size=None, crop_pct: float = 1.0, interpolation: str = "bilinear"):
    """The proposed ``plugins.video.load_video``: the same checks and result, PyAV decoding.

    Falls back to the shipped decord path for a stream PyAV cannot index (no timestamps).
    """
    from core.errors import UndecodableInputError
    from plugins import video as V

    with V._local_file(media) as path:
        try:
            index = index_video(path)
        except Exception:  # no timestamps, or not a video PyAV reads: decord decides and explains
            with _patched(V, "resize_frames", resize_frames_uint8):
                return V.load_video(media, config, frame_size, crop_pct, interpolation)
        V._check_video(media, config, len(index.pts), index.fps)
        if index.width * index.height > config.max_pixels_per_frame:
            raise UndecodableInputError(
                f"{media.name} has {index.width}x{index.height} frames, over the limit of "
                f"{config.max_pixels_per_frame} pixels; downscale it first or raise video.max_pixels_per_frame")
        sampling = V.sample_indices(len(index.pts), index.fps, config.sampling, config.num_frames,
                                    config.fps, config.max_frames)
        try:
            frames = torch.from_numpy(read_frames(path, sampling.indices, index, config.num_threads))
        except Exception as e:
            raise UndecodableInputError(f"cannot decode frames of {media.name} ({e}); the file may be "
                                        "truncated or corrupt") from None
    pixels = (resize_frames_uint8(frames, frame_size, crop_pct, interpolation) if frame_size is not None
              else frames.permute(0, 3, 1, 2).float().div(255))
    return V.VideoClip(pixels, sampling.indices, sampling.timestamps, index.fps, len(index.pts),
                       index.width, index.height)


# -- the baselines --------------------------------------------------------------------------------


def pyav_decode_all(path: str, indices: Sequence[int]) -> np.ndarray:
    """torchvision ``read_video`` / PyTorchVideo style: every frame decoded and converted, then indexed."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)[list(indices)]


def pyav_seek(path: str, indices: Sequence[int]) -> np.ndarray:
    """A careful keyframe seek per sampled frame (see the module docstring)."""
    return read_frames(path, indices, skip_unneeded=False)


# -- the measurement ------------------------------------------------------------------------------


def _variants(path: Path, k: int) -> dict[str, Callable[[], torch.Tensor]]:
    from core.media import Media
    from plugins import video as V

    media = Media.of(path)
    config = V.DecordVideoConfig(num_frames=k, max_frames=max(k, 32))
    index = index_video(str(path))
    indices = V.sample_indices(len(index.pts), index.fps, "uniform", k, max_frames=max(k, 32)).indices

    def plugin_u8():
        with _patched(V, "resize_frames", resize_frames_uint8):
            return V.load_video(media, config, FRAME_SIZE).frames

    return {
        "plugin": lambda: V.load_video(media, config, FRAME_SIZE).frames,
        "plugin+u8": plugin_u8,
        "proposed": lambda: load_video_fast(media, config, FRAME_SIZE).frames,
        "pyav decode-all": lambda: resize_frames_uint8(torch.from_numpy(pyav_decode_all(str(path), indices)),
                                                       FRAME_SIZE),
        "pyav seek": lambda: resize_frames_uint8(torch.from_numpy(pyav_seek(str(path), indices)), FRAME_SIZE),
    }


def _check_same_frames(variants: dict[str, Callable[[], torch.Tensor]]) -> float:
    """Largest pixel difference (in 1/255) between the variants' outputs: they must sample alike."""
    outs = {name: fn() for name, fn in variants.items()}
    ref = outs["pyav seek"]
    return max(float((o - ref).abs().max()) * 255 for o in outs.values())


def _decord_profile(path: Path, k: int, repeats: int) -> list[dict[str, Any]]:
    """Where decord's time goes: opening (its packet index) vs get_batch, per thread count."""
    import decord

    from plugins.video import sample_indices

    n = len(decord.VideoReader(str(path), num_threads=1))
    indices = sample_indices(n, 30.0, "uniform", k, max_frames=max(k, 32)).indices
    variants = {
        "index only (PyAV demux, no decoding)": lambda: index_video(str(path)),
        "decord open (builds its index)": lambda: len(decord.VideoReader(str(path))),
        "decord open + get_batch, threads auto": lambda: decord.VideoReader(str(path)).get_batch(indices).asnumpy(),
        "decord open + get_batch, 1 thread": lambda: decord.VideoReader(str(path), num_threads=1)
        .get_batch(indices).asnumpy(),
        "decord open + get_batch, 2 threads": lambda: decord.VideoReader(str(path), num_threads=2)
        .get_batch(indices).asnumpy(),
        "decord open + get_batch of every frame": lambda: decord.VideoReader(str(path))
        .get_batch(list(range(n))).asnumpy(),
        "PyAV careful seek (no resize)": lambda: pyav_seek(str(path), indices),
        "PyAV reference frames only (no resize)": lambda: read_frames(str(path), indices),
        "PyAV decode-all (no resize)": lambda: pyav_decode_all(str(path), indices),
    }
    frames_u8 = torch.from_numpy(pyav_seek(str(path), indices))
    from plugins.video import resize_frames

    variants["resize, float (shipped)"] = lambda: resize_frames(frames_u8, FRAME_SIZE)
    variants["resize, uint8 (proposed)"] = lambda: resize_frames_uint8(frames_u8, FRAME_SIZE)
    timings = compare(variants, repeats=repeats, warmup=1)
    return [{"step": name, "frames": k, "ms": ms(t.median), "best ms": ms(t.best)} for name, t in timings.items()]


def run(quick: bool = False) -> Section:
    section = Section("video", "Video sampling: K uniform frames -> (K, 3, 224, 224) float tensor")
    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory(prefix="mmassist-bench-") as tmp:
        log("video: writing the test clip")
        clip = write_clip(Path(tmp) / "clip.mp4", seconds=10.0, preset="ultrafast" if quick else "medium")
        index = index_video(str(clip))
        section.note(f"synthetic clip: 10 s, 640x360, 30 fps, H.264 (libx264 {'ultrafast' if quick else 'medium'}, "
                     f"crf 23), {len(index.pts)} frames, keyframes at frames "
                     f"{[index.pts.index(p) for p in index.keyframe_pts]}")
        clips = [("10 s 640x360", clip)]
        if REAL_CLIP.is_file() and not quick:
            real = index_video(str(REAL_CLIP))
            section.note(f"real clip: {REAL_CLIP.name}, {real.width}x{real.height}, {len(real.pts)} frames, "
                         f"keyframes at frames {[real.pts.index(p) for p in real.keyframe_pts]}")
            clips.append((REAL_CLIP.name, REAL_CLIP))
        for name, path in clips:
            for k in ([HEADLINE_FRAMES] if quick else [8, 16, 32]):
                log(f"video: {name}, {k} frames")
                variants = _variants(path, k)
                diff = _check_same_frames(variants)
                t = compare(variants, repeats=repeats, warmup=0 if quick else 1)
                seek, all_ = t["pyav seek"].median, t["pyav decode-all"].median
                row = {"clip": name, "frames": k}
                row.update({f"{v} ms": ms(t[v].median) for v in variants})
                row.update({"plugin: decode-all / ours": ratio(all_, t["plugin"].median),
                            "plugin: seek / ours": ratio(seek, t["plugin"].median),
                            "proposed: decode-all / ours": ratio(all_, t["proposed"].median),
                            "proposed: seek / ours": ratio(seek, t["proposed"].median),
                            "max pixel diff (/255)": round(diff, 2)})
                section.row(**row)
                if path == clip and k == HEADLINE_FRAMES:
                    section.keys["video_sampling_speedup_vs_pyav_decode_all"] = ratio(all_, t["proposed"].median)
                    section.keys["video_sampling_speedup_vs_pyav_seek"] = ratio(seek, t["proposed"].median)
                    section.keys["video_sampling_speedup_vs_pyav_decode_all_shipped"] = ratio(all_, t["plugin"].median)
                    section.keys["video_sampling_speedup_vs_pyav_seek_shipped"] = ratio(seek, t["plugin"].median)
        if not quick:
            log("video: decord profile")
            section.tables["Where the time goes (10 s clip, 16 frames)"] = _decord_profile(clip, HEADLINE_FRAMES, repeats)
    return section
