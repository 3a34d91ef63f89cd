"""Built-in plugin ``video/decord``: videos decoded with decord, frames through a timm image backbone.

A video becomes a few sampled frames (uniform over the clip, or a fixed number per second), each
frame a few tokens (its backbone feature map pooled to ``tokens_per_frame``), so one input gives
(F * tokens_per_frame, D) features with a ``time_index`` telling which frame each token came from;
the fusion module adds the temporal embedding from it.

Decoding notes (PyAV 18, decord2 3.4):

- Frames are decoded with PyAV (:func:`read_frames`): between sampled frames FFmpeg skips the
  frames nothing refers to, and seeks only to a keyframe that lies ahead; only the sampled frames
  are converted to RGB. A stream PyAV cannot index (packets without timestamps), a rotated one,
  or one it fails on goes through decord, whose errors name the problem.
- Frames are decoded at their native size and resized here, on uint8 pixels: decord's own
  ``width=``/``height=`` resize is not trusted.
- Inputs given as bytes are written to a temporary file: decord's in-memory reader
  (``VideoReader(io.BytesIO(...))``) crashes the process (SIGSEGV) on some corrupt AVI/MOV bytes,
  where its file reader raises an exception.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from mmassist.core.schema import check_choice, check_range, help_field
from mmassist.core.contract.encoders import Encoder, EncoderOutput, EncoderSpec, pad_sequences
from mmassist.core.errors import ConfigError, UndecodableInputError
from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.media import Media
from mmassist.core.contract.testing import moving_shapes, write_test_video  # the plugin's example inputs
from mmassist.plugins.image import INITIAL_WEIGHTS, TimmImageConfig, TimmImageEncoder  # the frame backbone

VIDEO_MIME_TYPES = ("video/mp4", "video/x-matroska", "video/webm", "video/quicktime", "video/x-msvideo")
SAMPLING_MODES = ("uniform", "fps")
_SUFFIXES = {"video/mp4": ".mp4", "video/x-matroska": ".mkv", "video/webm": ".webm",
             "video/quicktime": ".mov", "video/x-msvideo": ".avi"}
_FORMATS_HELP = "give a valid MP4, MKV, WebM, MOV or AVI video"
# Decoded native frames are resized in chunks of at most this many bytes (as float32).
_DECODE_BUDGET_BYTES = 64 * 2**20
# FFmpeg demuxers of the containers above; anything else PyAV opens (an image...) is left to decord.
_PYAV_FORMATS = {"mov", "mp4", "matroska", "webm", "avi"}
_MAX_CHUNK_FRAMES = 16


@dataclass
class DecordVideoConfig:
    """How videos are sampled, decoded and encoded."""

    backbone: TimmImageConfig = help_field(default_factory=TimmImageConfig,
                                           help="the timm image backbone every frame goes through")
    sampling: str = help_field("uniform", choices=SAMPLING_MODES,
                               help="'uniform': num_frames frames spread over the clip; "
                                    "'fps': fps frames per second of video, at most max_frames")
    num_frames: int = help_field(8, help="uniform sampling: how many frames (fewer for shorter videos)")
    fps: float = help_field(1.0, help="fps sampling: frames per second of video")
    max_frames: int = help_field(32, help="at most this many frames per video; longer fps samplings "
                                          "fall back to max_frames uniform frames")
    image_size: int | None = help_field(None, help="frames are resized (short side) and centre-cropped "
                                                   "to this size; default: backbone.image_size, else "
                                                   "the backbone's own input size")
    tokens_per_frame: int = help_field(1, help="each frame's feature map is average-pooled to k x k "
                                               "tokens; a square number (1 = one vector per frame)")
    num_threads: int = help_field(0, help="decoding threads per video; 0 = automatic")
    max_duration_s: float = help_field(4 * 3600.0, help="refuse longer videos (seconds)")
    max_video_frames: int = help_field(1_000_000, help="refuse videos with more frames")
    max_pixels_per_frame: int = help_field(4096 * 2160, help="refuse videos with larger frames "
                                                             "(width x height)")

    def __post_init__(self):
        check_choice("video.sampling", self.sampling, SAMPLING_MODES)
        check_range("video.max_frames", self.max_frames, 1, 1024)
        check_range("video.num_frames", self.num_frames, 1, 1024)
        if self.num_frames > self.max_frames:
            raise ConfigError(f"video.num_frames={self.num_frames} must be <= video.max_frames={self.max_frames}")
        check_range("video.fps", self.fps, 0, 1000, lo_open=True)
        if self.image_size is not None:
            check_range("video.image_size", self.image_size, 16, 4096)
            if self.backbone.image_size is not None and self.backbone.image_size != self.image_size:
                raise ConfigError(
                    f"video.image_size={self.image_size} and video.backbone.image_size="
                    f"{self.backbone.image_size} disagree; set only one of them"
                )
        check_range("video.tokens_per_frame", self.tokens_per_frame, 1, 1024)
        side = math.isqrt(self.tokens_per_frame)
        if side * side != self.tokens_per_frame:
            raise ConfigError(
                f"video.tokens_per_frame={self.tokens_per_frame} must be a square number (1, 4, 9, 16...): "
                "each frame's feature map is pooled to k x k tokens"
            )
        if self.backbone.pool_tokens is not None and self.backbone.pool_tokens != side:
            raise ConfigError(
                f"video.backbone.pool_tokens={self.backbone.pool_tokens} conflicts with "
                f"video.tokens_per_frame={self.tokens_per_frame}; leave backbone.pool_tokens unset "
                "and set tokens_per_frame"
            )
        check_range("video.num_threads", self.num_threads, 0, 256)
        check_range("video.max_duration_s", self.max_duration_s, 0, lo_open=True)
        check_range("video.max_video_frames", self.max_video_frames, 1)
        check_range("video.max_pixels_per_frame", self.max_pixels_per_frame, 1)


# -- frame sampling -----------------------------------------------------------------------------


class FrameSampling(NamedTuple):
    """Which frames of a video are used: their indices and their nominal times in seconds."""

    indices: list[int]
    timestamps: list[float]


def sample_indices(num_video_frames: int, video_fps: float, sampling: str = "uniform", num_frames: int = 8,
                   fps: float = 1.0, max_frames: int = 32) -> FrameSampling:
    """The frames to decode from a video of ``num_video_frames`` frames at ``video_fps``.

    ``uniform``: the centre frame of each of ``min(num_frames, max_frames)`` equal segments (the
    TSN / LLaVA-Video test-time convention); a video with fewer frames gives each frame once.
    ``fps``: frame 0 and then one frame every ``video_fps / fps`` frames (every frame when ``fps``
    is at least ``video_fps``); when that is more than ``max_frames`` frames, ``max_frames``
    uniform frames over the whole clip instead. Indices are strictly increasing and in range;
    timestamps are ``index / video_fps``.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames={num_video_frames} must be >= 1")
    if not (math.isfinite(video_fps) and video_fps > 0):
        raise ValueError(f"video_fps={video_fps} must be a positive number")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling={sampling!r} must be one of {SAMPLING_MODES}")
    if num_frames < 1 or max_frames < 1 or not fps > 0:
        raise ValueError("num_frames, max_frames and fps must be positive")
    n = num_video_frames
    if sampling == "fps":
        step = max(1.0, video_fps / fps)
        count = math.ceil(n / step - 1e-9)
        if count <= max_frames:
            indices = sorted({min(n - 1, math.floor(j * step + 1e-9)) for j in range(count)})
            return FrameSampling(indices, [i / video_fps for i in indices])
        num_frames = max_frames
    k = min(num_frames, max_frames)
    if n <= k:
        indices = list(range(n))
    else:
        indices = [((2 * i + 1) * n) // (2 * k) for i in range(k)]  # centre of segment i, exactly
    return FrameSampling(indices, [i / video_fps for i in indices])


# -- decoding -----------------------------------------------------------------------------------


@dataclass
class VideoClip:
    """Frames sampled from one video. ``frames``: (F, 3, H, W) float in [0, 1]."""

    frames: torch.Tensor
    indices: list[int]
    timestamps: list[float]
    video_fps: float
    num_video_frames: int
    width: int
    height: int


def load_video(media: Media, config: DecordVideoConfig, frame_size: tuple[int, int] | None = None,
               crop_pct: float = 1.0, interpolation: str = "bilinear") -> VideoClip:
    """Decode the frames ``config`` samples from a video input, with clear errors for bad files.

    ``frame_size`` (H, W): resize and centre-crop the frames as timm's eval transform does
    (see :func:`resize_frames`); None keeps the native size.
    """
    with _local_file(media) as path:
        index = index_frames(path, cache=media.path is not None)
        if index is not None:
            _check_video(media, config, len(index.pts), index.fps)
            _check_frame_size(media, config, index.width, index.height)
            sampling = sample_indices(len(index.pts), index.fps, config.sampling, config.num_frames,
                                      config.fps, config.max_frames)
            chunk = max(1, min(_MAX_CHUNK_FRAMES, _DECODE_BUDGET_BYTES // (index.width * index.height * 3 * 4)))
            try:
                frames = [_resize(torch.from_numpy(np.stack(part)), frame_size, crop_pct, interpolation)
                          for part in _chunks(read_frames(path, sampling.indices, index, config.num_threads), chunk)]
            except Exception:  # a corrupt packet, a frame without a timestamp, a rotated stream...
                frames = None  # decord decodes it, or says what is wrong with it
            if frames is not None:
                return VideoClip(torch.cat(frames), sampling.indices, sampling.timestamps, index.fps,
                                 len(index.pts), index.width, index.height)
        return _load_video_decord(media, path, config, frame_size, crop_pct, interpolation)


def _load_video_decord(media: Media, path: str, config: DecordVideoConfig, frame_size: tuple[int, int] | None,
                       crop_pct: float, interpolation: str) -> VideoClip:
    """:func:`load_video` through decord, for the streams PyAV does not read; its errors name the problem."""
    import decord

    try:
        reader = decord.VideoReader(path, num_threads=config.num_threads)
        num_video_frames = len(reader)
        video_fps = float(reader.get_avg_fps())
    except Exception as e:  # decord raises DECORDError, RuntimeError, AssertionError...
        raise UndecodableInputError(
            f"cannot open {media.name} as a video ({_reason(e, path, media)}); {_FORMATS_HELP}"
        ) from None
    try:
        _check_video(media, config, num_video_frames, video_fps)
        sampling = sample_indices(num_video_frames, video_fps, config.sampling, config.num_frames,
                                  config.fps, config.max_frames)
        first = _get_batch(reader, sampling.indices[:1], media)  # (1, H, W, 3) uint8
        height, width = first.shape[1:3]
        _check_frame_size(media, config, width, height)
        chunk = max(1, min(_MAX_CHUNK_FRAMES, _DECODE_BUDGET_BYTES // (width * height * 3 * 4)))
        frames = [_resize(first, frame_size, crop_pct, interpolation)]
        rest = sampling.indices[1:]
        for start in range(0, len(rest), chunk):
            batch = _get_batch(reader, rest[start:start + chunk], media)
            frames.append(_resize(batch, frame_size, crop_pct, interpolation))
    finally:
        del reader
    return VideoClip(torch.cat(frames), sampling.indices, sampling.timestamps, video_fps, num_video_frames,
                     int(width), int(height))


def _check_frame_size(media: Media, config: DecordVideoConfig, width: int, height: int) -> None:
    if width * height > config.max_pixels_per_frame:
        raise UndecodableInputError(
            f"{media.name} has {width}x{height} frames, over the limit of {config.max_pixels_per_frame} "
            "pixels; downscale it first (ffmpeg -i in.mp4 -vf scale=-2:720 out.mp4) or raise "
            "video.max_pixels_per_frame"
        )


def _check_video(media: Media, config: DecordVideoConfig, num_video_frames: int, video_fps: float) -> None:
    if num_video_frames < 1:
        raise UndecodableInputError(f"{media.name} has no video frames; {_FORMATS_HELP}")
    if not (math.isfinite(video_fps) and 0 < video_fps <= 10_000):
        raise UndecodableInputError(
            f"{media.name} reports an invalid frame rate ({video_fps}); re-encode it with a fixed "
            "frame rate (ffmpeg -i in.mp4 -r 30 out.mp4)"
        )
    if num_video_frames > config.max_video_frames:
        raise UndecodableInputError(
            f"{media.name} has {num_video_frames} frames, over the limit of {config.max_video_frames}; "
            "cut it into shorter clips or raise video.max_video_frames"
        )
    duration = num_video_frames / video_fps
    if duration > config.max_duration_s:
        raise UndecodableInputError(
            f"{media.name} lasts {duration:.0f} s, over the limit of {config.max_duration_s:.0f} s; "
            "cut it into shorter clips or raise video.max_duration_s"
        )


class FrameIndex(NamedTuple):
    """A video stream's frames without decoding them: presentation timestamps in display order
    (frame i has the i-th smallest, as decord numbers frames), keyframe timestamps, fps and size."""

    pts: list[int]
    keyframe_pts: list[int]
    fps: float
    width: int
    height: int


def index_frames(path: str, cache: bool = False) -> FrameIndex | None:
    """Read the packet headers of the first video stream (no decoding); None when PyAV cannot.

    ``cache``: remember the index of this file (by path, size and modification time), so that
    sampling the same video again skips this pass.
    """
    if cache:
        st = os.stat(path)
        return _index_frames_cached(path, st.st_size, st.st_mtime_ns)
    return _index_frames(path)


@functools.lru_cache(maxsize=1024)
def _index_frames_cached(path: str, size: int, mtime_ns: int) -> FrameIndex | None:
    return _index_frames(path)


def _index_frames(path: str) -> FrameIndex | None:
    import av

    try:
        with av.open(path) as container:
            if not set(container.format.name.split(",")) & _PYAV_FORMATS:
                return None  # an image, a raw stream...: not a format this plugin takes
            stream = container.streams.video[0]
            pts, keys = [], []
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
            fps = float(stream.average_rate) if stream.average_rate else float("nan")
            width, height = stream.codec_context.width, stream.codec_context.height
    except Exception:  # not a video PyAV reads; decord says why
        return None
    if not pts or width * height == 0:
        return None
    pts.sort()
    keys.sort()
    if not keys or keys[0] > pts[0]:
        keys.insert(0, pts[0])  # decoding starts at the first packet anyway
    return FrameIndex(pts, keys, fps, width, height)


def read_frames(path: str, indices: Sequence[int], index: FrameIndex, num_threads: int = 0,
                skip_unneeded: bool = True) -> Iterator[np.ndarray]:
    """Decode frames ``indices`` (strictly increasing) -> each (H, W, 3) uint8 RGB, in order.

    Seeks to the keyframe before a wanted frame only when that keyframe lies past the decoder's
    position; in between, FFmpeg skips non-reference frames (``skip_frame=NONREF``): no other frame
    depends on them, so the wanted ones come out bit-identical to a full decode. Only the wanted
    frames are converted to RGB. Raises on anything unexpected; the caller then uses decord.
    ``skip_unneeded=False`` decodes every frame on the way (a careful keyframe seek, the
    benchmark's baseline).
    """
    import av

    targets = [index.pts[i] for i in indices]
    got: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = num_threads
        codec = stream.codec_context
        segment_key, last = None, None  # keyframe decoding started from, pts of the last frame out
        for n, target in enumerate(targets):
            if target not in got:
                key = index.keyframe_pts[bisect.bisect_right(index.keyframe_pts, target) - 1]
                if segment_key is None or key > segment_key and (last is None or key > last):
                    container.seek(key, stream=stream, backward=True, any_frame=False)
                    segment_key, last = key, None
                wanted = set(targets[n:])
                for packet in container.demux(stream):
                    if skip_unneeded:
                        codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                    for frame in packet.decode():
                        if frame.rotation:
                            raise ValueError("a rotated stream")  # decord applies the rotation
                        last = frame.pts
                        if frame.pts in wanted:
                            got[frame.pts] = frame.to_ndarray(format="rgb24")
                    if target in got or (last is not None and last > target):
                        break
                if target not in got:
                    raise ValueError(f"frame {indices[n]} did not come out of the decoder")
            yield got.pop(target)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    part: list[Any] = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def _get_batch(reader: Any, indices: list[int], media: Media) -> torch.Tensor:
    """Decode frames ``indices`` -> (N, H, W, 3) uint8, any decord failure as UndecodableInputError."""
    try:
        array = reader.get_batch(indices).asnumpy()
    except Exception as e:
        raise UndecodableInputError(
            f"cannot decode frames {indices[0]}..{indices[-1]} of {media.name} ({_reason(e, '', media)}); the file may "
            f"be truncated or corrupt: re-encode it (ffmpeg -i in.mp4 out.mp4) or {_FORMATS_HELP}"
        ) from None
    if array.ndim != 4 or array.shape[0] != len(indices) or array.shape[3] != 3 or array.size == 0:
        raise UndecodableInputError(f"{media.name} decoded to frames of shape {array.shape}; {_FORMATS_HELP}")
    return torch.from_numpy(array)


def _resize(frames: torch.Tensor, size: tuple[int, int] | None, crop_pct: float, interpolation: str) -> torch.Tensor:
    if size is None:
        return frames.permute(0, 3, 1, 2).float().div(255)  # (N, H, W, 3) -> (N, 3, H, W)
    return resize_frames(frames, size, crop_pct, interpolation)


def resize_frames(frames: torch.Tensor, size: tuple[int, int], crop_pct: float = 1.0,
                  interpolation: str = "bilinear") -> torch.Tensor:
    """(N, H, W, 3) uint8 frames -> (N, 3, h, w) float in [0, 1], as timm's eval transform does it.

    A square ``size`` scales the short side to ``size / crop_pct`` (keeping the aspect ratio), a
    non-square one scales to ``size / crop_pct``; then the centre ``size`` is cropped. Resized on
    uint8 pixels in channels-last memory (PyTorch's vectorised antialias kernel, what torchvision
    uses): several times faster than on float, within one grey level of it.
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


@contextlib.contextmanager
def _local_file(media: Media) -> Iterator[str]:
    """A file path decord can open: the input's own path, or a temporary copy of its bytes."""
    if media.path is not None:
        # Absolute, so that FFmpeg never reads a file name like 'concat:...' as a protocol.
        yield str(Path(media.path).resolve())
        return
    data = media.read_bytes()
    if not data:
        raise UndecodableInputError(f"{media.name} is empty (0 bytes); give a non-empty video")
    fd, name = tempfile.mkstemp(prefix="mmassist-video-", suffix=_SUFFIXES.get(media.mime_type, ".bin"))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _reason(e: Exception, path: str, media: Media) -> str:
    """decord's message without its timestamps, source locations, stack traces or temporary names."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    if text.startswith("Error reading "):  # decord's RuntimeError when FFmpeg cannot open the file
        return "FFmpeg found no readable video in it; it may be truncated or not a video"
    if path:
        text = text.replace(path, media.name)
    return text[:200]


# -- the encoder --------------------------------------------------------------------------------


def pool_frame_tokens(tokens: torch.Tensor, num_tokens: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """(N, T, D) tokens of each frame -> (N, num_tokens, D) by average pooling.

    Tokens already ``num_tokens`` long pass through (a CNN map pooled by the backbone). ViT tokens
    lose their prefix (class) tokens and are pooled on their square patch grid; any other sequence
    is pooled along its length.
    """
    n, t, d = tokens.shape
    if t == num_tokens:
        return tokens
    side = math.isqrt(num_tokens)
    grid = math.isqrt(t - num_prefix_tokens) if t > num_prefix_tokens else 0
    if grid > 0 and grid * grid == t - num_prefix_tokens and side * side == num_tokens:
        patches = tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(n, d, grid, grid)  # (N, D, g, g)
        pooled = torch.nn.functional.adaptive_avg_pool2d(patches, side)  # (N, D, k, k)
        return pooled.flatten(2).transpose(1, 2)  # (N, k*k, D)
    return torch.nn.functional.adaptive_avg_pool1d(tokens.transpose(1, 2), num_tokens).transpose(1, 2)


class DecordVideoEncoder(Encoder):
    """Video encoder: sampled frames through a timm image backbone, k x k tokens per frame."""

    temporal = True  # outputs carry the frame position as time_index

    def __init__(self, config: DecordVideoConfig):
        super().__init__()
        self.config = config
        self.tokens_per_frame = config.tokens_per_frame
        backbone_cfg = dataclasses.replace(
            config.backbone,
            image_size=config.image_size if config.image_size is not None else config.backbone.image_size,
            pool_tokens=math.isqrt(config.tokens_per_frame),
        )
        self.frame_encoder = TimmImageEncoder(backbone_cfg)
        self.output_dim = self.frame_encoder.output_dim
        self.pretrained_source = self.frame_encoder.pretrained_source
        data_cfg = self.frame_encoder.data_config
        self.frame_size = (int(data_cfg["input_size"][1]), int(data_cfg["input_size"][2]))
        self.crop_pct = float(data_cfg.get("crop_pct") or 1.0)
        self.interpolation = str(data_cfg.get("interpolation") or "bilinear")
        self.mean = tuple(float(m) for m in data_cfg["mean"])
        self.std = tuple(float(s) for s in data_cfg["std"])

    def load(self, media: Media) -> VideoClip:
        """Decode one video's sampled frames at the backbone's input size."""
        return load_video(media, self.config, self.frame_size, self.crop_pct, self.interpolation)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) pixels in [0, 1] -> normalised with the backbone's mean and std."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (frames - mean) / std

    def preprocess(self, items: Sequence[Media]) -> dict[str, torch.Tensor]:
        """Videos -> ``pixel_values`` (B, F, 3, H, W) right-padded, ``frame_mask`` (B, F) bool,
        ``frame_index`` (B, F) long (0..F_i-1) and ``timestamps`` (B, F) float seconds."""
        clips = [self.load(m) for m in items]
        pixel_values, frame_mask = pad_sequences([self.normalize(c.frames) for c in clips])
        frame_index, _ = pad_sequences([torch.arange(len(c.indices)) for c in clips])
        timestamps, _ = pad_sequences([torch.tensor(c.timestamps, dtype=torch.float32) for c in clips])
        return {"pixel_values": pixel_values, "frame_mask": frame_mask, "frame_index": frame_index,
                "timestamps": timestamps}

    def forward(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor, frame_index: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> EncoderOutput:
        """``timestamps`` is carried for callers (captions, previews); the encoder does not use it."""
        b, f = frame_mask.shape
        frames = pixel_values[frame_mask]  # (N, 3, H, W): padded frames are not run
        tokens = self.frame_tokens(frames)  # (N, k, D)
        k, d = tokens.shape[1:]
        per_frame = tokens.new_zeros(b, f, k, d)
        per_frame[frame_mask] = tokens
        features = per_frame.reshape(b, f * k, d)  # (B, F*k, D)
        mask = frame_mask.repeat_interleave(k, dim=1)  # (B, F*k)
        time_index = frame_index.long().repeat_interleave(k, dim=1)  # (B, F*k)
        weights = mask.unsqueeze(-1).to(features.dtype)
        pooled = (features * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
        return EncoderOutput(features=features, mask=mask, time_index=time_index, pooled=pooled)

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames -> (N, tokens_per_frame, D)."""
        tokens = self.frame_encoder.tokens(frames)  # (N, T, D); a CNN map is already k x k
        prefix = int(getattr(self.frame_encoder.backbone, "num_prefix_tokens", 0) or 0)
        return pool_frame_tokens(tokens, self.tokens_per_frame, prefix)


# -- registration -------------------------------------------------------------------------------


def tiny_config() -> DecordVideoConfig:
    return DecordVideoConfig(backbone=TimmImageConfig(model_name="test_resnet"), image_size=64, num_frames=4,
                             max_frames=8, tokens_per_frame=1, num_threads=1)


def example_inputs(tmp_dir: Path) -> list[Any]:
    """An MP4 file and WebM bytes of moving shapes (16 frames, 64x48)."""
    tmp_dir = Path(tmp_dir)
    mp4 = write_test_video(tmp_dir / "shapes.mp4", moving_shapes(16, seed=0), fps=8)
    webm = write_test_video(tmp_dir / "shapes.webm", moving_shapes(12, seed=1), fps=6)
    return [mp4, webm.read_bytes()]


@hookimpl
def register_encoders(register):
    register(EncoderSpec(
        name="video/decord",
        modality="video",
        mime_types=VIDEO_MIME_TYPES,
        config_cls=DecordVideoConfig,
        build=DecordVideoEncoder,
        description="decord frames (uniform or fps sampling) through a timm backbone, k x k tokens per frame",
        tiny_config=tiny_config,
        example_inputs=example_inputs,
        initial_weights=INITIAL_WEIGHTS,
    ))
