"""Probe: what a local video file holds, read from container headers and demuxed packets.

Only one frame is decoded (to prove the stream decodes and to read the display matrix and the
pixel format); timestamps come from the packets. Every way a file can be unusable ends here as
a `VideoError` with `stage=probe`, so bad inputs never reach the DALI graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vqf.config import DecodeConfig, Recipe, SamplingConfig
from vqf.errors import ErrorType, Stage, VideoError

ROUTES = ("nvdec", "dali-cpu", "pyav")
NVDEC_CODECS = ("h264", "hevc", "vp8", "vp9", "mpeg4", "mjpeg", "av1")
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")
# NVDEC's documented coded-size limits per codec (NVIDIA Video Codec SDK, NVDEC programming
# guide, "Hardware video decoder capabilities", Turing to Ada/Hopper): (min width, min height,
# max width, max height). A stream outside them is refused by the decoder, so it never goes
# there. JPEG's minimum is kept at 64x64 so a tiny MJPEG stream never relies on the edge.
NVDEC_LIMITS = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "vp8": (48, 16, 4096, 4096),
    "vp9": (128, 128, 8192, 8192),
    "av1": (128, 128, 8192, 8192),
    "mpeg4": (48, 16, 2032, 2032),
    "mjpeg": (64, 64, 16384, 16384),
}
# DALI's decoders number frames by the container's packet timestamps. AVI stores none (they
# follow decode order, and packed B-frames swap neighbours), so only intra-only codecs, whose
# decode order is their display order, take a DALI route from an AVI.
INTRA_ONLY_CODECS = ("mjpeg",)
# 8-bit layouts each DALI decoder is relied on for (checked against PyAV for the CPU one;
# NVDEC's chroma support varies by codec and GPU, so it gets 4:2:0 only). Anything else,
# 10-bit included, goes through FFmpeg.
NVDEC_PIX_FMTS = ("yuv420p", "yuvj420p", "nv12")
DALI_CPU_PIX_FMTS = (*NVDEC_PIX_FMTS, "yuv422p", "yuvj422p", "yuv444p", "yuvj444p")
# Demuxers that open things which are not videos (ANSI art, still images, subtitles).
NOT_VIDEO_FORMATS = ("tty", "image2", "lrc", "srt", "webvtt", "ass")
NOT_VIDEO_CODECS = ("ansi",)
# Leading bytes of the containers we can name, to tell "damaged video" from "not a video".
CONTAINER_MAGIC = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"FLV"), (4, b"moov"))


@dataclass(frozen=True, eq=False)
class VideoInfo:
    """Probe result. `width`/`height` are the stored size; `display_*` apply the rotation."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    frame_count: int
    duration_s: float
    fps: float
    vfr: bool
    timestamps: np.ndarray = field(repr=False)
    pts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    time_base: float = 0.0
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    rotation: int = 0
    pix_fmt: str = ""
    bit_depth: int = 8
    has_video: bool = True
    has_audio: bool = False
    size_bytes: int = 0
    route: str = "pyav"
    route_reason: str = ""

    @property
    def display_width(self) -> int:
        return self.height if self.rotation in (90, 270) else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation in (90, 270) else self.height


def probe(
    path: str | Path,
    *,
    decode: DecodeConfig | None = None,
    sampling: SamplingConfig | None = None,
    device: str | None = None,
) -> VideoInfo:
    """Reads `path`'s metadata and picks its decode route; raises VideoError(stage=probe).

    `sampling` gives the minimum duration/frame count (TOO_SHORT); `device` ("cpu",
    "cuda:N") decides whether NVDEC is on offer, found out from torch when None.
    """
    import av

    decode = decode or DecodeConfig()
    path = Path(path)
    size = _check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise _unopenable(path, e) from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(ErrorType.NOT_A_VIDEO, f"{path.name}: cannot be opened ({e})") from None
    # everything read from the stream is read while the container is open: PyAV's stream
    # object points into the container's memory, which closing it frees
    with container:
        stream = _video_stream(container, path)
        fields = _stream_fields(container, stream, path, decode=decode)
        timestamps, first, ticks, keyframes = _demux(container, stream, path)
        timing = {
            "time_base": float(stream.time_base),
            "duration_s": _duration(timestamps, stream),
            "fps": _fps(timestamps, stream),
            "vfr": _is_vfr(timestamps, stream),
            "rotation": _rotation(first),
            "pix_fmt": first.format.name,
            "bit_depth": max(c.bits for c in first.format.components),
        }
    info = VideoInfo(
        path=str(path),
        timestamps=timestamps,
        pts=ticks,
        keyframes=keyframes,
        frame_count=len(timestamps),
        size_bytes=size,
        **timing,
        **fields,
    )
    _check_length(info, sampling or SamplingConfig())
    route, reason = choose_route(info, requested=decode.route, device=device)
    return _replace(info, route=route, route_reason=reason)


def choose_route(
    info: VideoInfo, *, requested: str = "auto", device: str | None = None
) -> tuple[str, str]:
    """The decode route for `info` and why: NVDEC when the GPU has the codec, else DALI's CPU
    decoder for VP8/VP9/MJPEG, else PyAV. A requested route that cannot take it falls back."""
    if requested not in ("auto", *ROUTES):
        raise ValueError(f"decode route {requested!r} is not one of auto, {', '.join(ROUTES)}")
    refused = {
        "nvdec": _nvdec_refusal(info, nvdec_codecs(device)),
        "dali-cpu": _dali_cpu_refusal(info),
        "pyav": None,
    }
    if requested != "auto":
        if refused[requested] is None:
            return requested, "requested"
        fallback = "dali-cpu" if refused["dali-cpu"] is None else "pyav"
        return fallback, f"fallback: {requested} cannot decode this video ({refused[requested]})"
    passed = []  # the routes before the chosen one, and why each refused
    for route in ROUTES:
        if refused[route] is None:
            return route, "; ".join(["auto", *passed])
        passed.append(f"not {route}: {refused[route]}")
    return "pyav", "auto"


def nvdec_takes(codec: str, *, width: int, height: int) -> bool:
    """Whether NVDEC's documented size limits for `codec` admit a `width` x `height` stream."""
    limits = NVDEC_LIMITS.get(codec)
    if limits is None:
        return False
    min_w, min_h, max_w, max_h = limits
    return min_w <= width <= max_w and min_h <= height <= max_h


def _nvdec_refusal(info: VideoInfo, codecs: tuple[str, ...]) -> str | None:
    """Why NVDEC cannot take `info` (None when it can): codec, chroma, size or container."""
    if info.codec not in codecs:
        return f"no {info.codec} on this GPU's NVDEC" if codecs else "no GPU"
    if info.pix_fmt not in NVDEC_PIX_FMTS:
        return f"{info.pix_fmt} is not 8-bit 4:2:0"
    if not nvdec_takes(info.codec, width=info.width, height=info.height):
        min_w, min_h, max_w, max_h = NVDEC_LIMITS[info.codec]
        return (
            f"{info.width}x{info.height} is outside NVDEC's {info.codec} sizes "
            f"{min_w}x{min_h} to {max_w}x{max_h}"
        )
    return _container_refusal(info)


def _dali_cpu_refusal(info: VideoInfo) -> str | None:
    if info.codec not in DALI_CPU_CODECS:
        return f"DALI's CPU decoder has no {info.codec}"
    if info.pix_fmt not in DALI_CPU_PIX_FMTS:
        return f"DALI's CPU decoder is not relied on for {info.pix_fmt}"
    return _container_refusal(info)


def _container_refusal(info: VideoInfo) -> str | None:
    if info.container == "avi" and info.codec not in INTRA_ONLY_CODECS:
        return f"{info.codec} in AVI has no presentation timestamps for DALI to number frames by"
    return None


def nvdec_codecs(device: str | None) -> tuple[str, ...]:
    """Codecs the NVDEC of `device` decodes through DALI; empty without CUDA."""
    if device is not None and not device.startswith("cuda"):
        return ()
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    index = int(device.split(":")[1]) if device and ":" in device else 0
    major, _ = torch.cuda.get_device_capability(index)
    # Hopper (compute capability 9.x) has no AV1 in NVDEC
    return tuple(c for c in NVDEC_CODECS if not (c == "av1" and major == 9))


def describe(path: str | Path, *, recipe: Recipe, device: str | None = None) -> str:
    """A readable account of the file's metadata and the sampling plan the recipe gives it."""
    from vqf.filters import dense_fps, dense_readers
    from vqf.video.plan import make_plan

    info = probe(path, decode=recipe.decode, sampling=recipe.sampling, device=device)
    fps = dense_fps(recipe)
    plan = make_plan(info.timestamps, sampling=recipe.sampling, dense_fps=fps)
    readers = dense_readers(recipe)
    dense = (
        f"{len(plan.dense)} frames, at least {fps:g} a second, for {', '.join(readers)}"
        if fps
        else "none (no enabled filter reads it)"
    )
    ts = info.timestamps
    lines = [
        f"file        {info.path} ({info.size_bytes / 1e6:.2f} MB, {info.container})",
        f"video       {info.codec} {info.width}x{info.height} {info.pix_fmt} "
        f"({info.bit_depth}-bit), rotation {info.rotation}, "
        f"displayed {info.display_width}x{info.display_height}",
        f"frames      {info.frame_count} over {info.duration_s:.3f} s, {info.fps:.3f} fps "
        f"({'variable' if info.vfr else 'constant'} frame rate)",
        f"timestamps  {_preview(ts)}",
        f"audio       {'yes' if info.has_audio else 'no'}",
        f"route       {info.route} ({info.route_reason})",
        f"plan        {len(plan.frames)} distinct frames to decode "
        f"({len(plan.frames) / max(info.frame_count, 1):.0%} of the video), {len(plan.clips)} clips, "
        f"{plan.frames_needed} frames needed in all",
        f"detect      frames {plan.frames[plan.detect_take].tolist()}",
        f"dense grid  {dense}",
    ]
    for clip in plan.clips:
        idx = plan.frames[clip.take]
        lines.append(
            f"  {clip.kind:<8} {clip.index:>3}  [{clip.start_s:7.3f}, {clip.end_s:7.3f}] s  "
            f"{len(idx)} frames: {idx[0]}..{idx[-1]} ({len(np.unique(idx))} distinct)"
        )
    return "\n".join(lines)


def _check_file(path: Path) -> int:
    if not path.is_file():
        raise _fail(ErrorType.NOT_FOUND, f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(ErrorType.NOT_A_VIDEO, f"{path.name} is empty (0 bytes)")
    return size


def _unopenable(path: Path, error: Exception) -> VideoError:
    """FFmpeg refused the file: a damaged container if its header names one, else not a video."""
    with path.open("rb") as f:
        head = f.read(16)
    if any(head[at : at + len(magic)] == magic for at, magic in CONTAINER_MAGIC):
        return _fail(
            ErrorType.CORRUPT_STREAM,
            f"{path.name} starts like a video container but cannot be read "
            f"(truncated or damaged): {error}",
        )
    kind = "text" if _is_text(head) else "data"
    return _fail(ErrorType.NOT_A_VIDEO, f"{path.name} is not a video ({kind} FFmpeg cannot read)")


def _is_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _video_stream(container, path: Path):
    if container.format.name in NOT_VIDEO_FORMATS:
        raise _fail(
            ErrorType.NOT_A_VIDEO,
            f"{path.name} is read by FFmpeg as {container.format.name!r}, not as a video",
        )
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    if not videos:
        audio = len(container.streams.audio)
        if audio:
            raise _fail(
                ErrorType.NOT_A_VIDEO,
                f"{path.name} is audio only ({audio} audio stream(s), no video stream)",
            )
        raise _fail(ErrorType.NOT_A_VIDEO, f"{path.name} has no video stream")
    return videos[0]


def _is_cover_art(stream) -> bool:
    disposition = getattr(stream, "disposition", None)
    return bool(disposition is not None and "attached_pic" in str(disposition).lower())


def _stream_fields(container, stream, path: Path, *, decode: DecodeConfig) -> dict:
    context = stream.codec_context
    if context is None:
        tag = getattr(stream, "codec_tag", "") or "unknown"
        raise _fail(
            ErrorType.UNSUPPORTED_CODEC,
            f"{path.name}: FFmpeg has no decoder for its video codec (tag {tag!r})",
            hint="re-encode to H.264, HEVC or VP9",
        )
    if context.name in NOT_VIDEO_CODECS:
        raise _fail(ErrorType.NOT_A_VIDEO, f"{path.name} holds {context.name!r}, not a video")
    width, height = context.width, context.height
    if width * height > decode.max_pixels:
        raise _fail(
            ErrorType.TOO_LARGE,
            f"{path.name} is {width}x{height} = {width * height} pixels, "
            f"over decode.max_pixels = {decode.max_pixels}",
            hint="raise decode.max_pixels in the recipe to accept it",
        )
    return {
        "container": container.format.name.split(",")[0],
        "codec": context.name,
        "width": width,
        "height": height,
        "has_audio": bool(container.streams.audio),
    }


def _demux(container, stream, path: Path):
    """Presentation times (seconds from the first frame, sorted), the first decoded frame, the
    sorted pts ticks, and the display-order indices of the keyframes (where a seek lands)."""
    import av

    times, keys, first, errors = [], [], None, 0
    try:
        for packet in container.demux(stream):
            ts = packet.pts if packet.pts is not None else packet.dts
            # a packet the edit list cuts is decoded for reference but never shown
            if packet.size == 0 or ts is None or getattr(packet, "is_discard", False):
                continue
            times.append(ts)
            if packet.is_keyframe:
                keys.append(ts)
            if first is None and errors < 8:
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    errors += 1
                    frames = []
                first = frames[0] if frames else None
    except av.error.FFmpegError as e:
        if not times:
            raise _fail(
                ErrorType.CORRUPT_STREAM, f"{path.name}: no readable packet ({e})"
            ) from None
    if not times:
        raise _fail(ErrorType.CORRUPT_STREAM, f"{path.name}: the video stream has no packets")
    if first is None:
        first = _flush(stream)
    if first is None:
        raise _fail(
            ErrorType.CORRUPT_STREAM, f"{path.name}: no frame decodes from {len(times)} packets"
        )
    ticks = np.unique(np.asarray(times, dtype=np.int64))
    keyframes = np.unique(np.searchsorted(ticks, np.asarray(keys, dtype=np.int64)))
    if len(keyframes) == 0 or keyframes[0] != 0:  # decoding always starts at the first frame
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    return (ticks - ticks[0]) * float(stream.time_base), first, ticks, keyframes


def _flush(stream):
    import av

    try:
        frames = stream.codec_context.decode(None)
    except av.error.FFmpegError:
        return None
    return frames[0] if frames else None


def _duration(ts: np.ndarray, stream) -> float:
    """Last timestamp plus one frame interval, so 40 frames at 10 fps last 4.0 s."""
    return float(ts[-1] + _interval(ts, stream))


def _interval(ts: np.ndarray, stream) -> float:
    if len(ts) > 1:
        return float(np.median(np.diff(ts)))
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.0


def _fps(ts: np.ndarray, stream) -> float:
    interval = _interval(ts, stream)
    if len(ts) > 1 and ts[-1] > 0:
        return float((len(ts) - 1) / ts[-1])
    return 1.0 / interval if interval else 0.0


def _is_vfr(ts: np.ndarray, stream) -> bool:
    if len(ts) < 3:
        return False
    steps = np.diff(ts)
    # two ticks of slack: muxers round times to their time base
    slack = max(2 * float(stream.time_base), 0.01 * float(np.median(steps)))
    return bool(steps.max() - steps.min() > slack)


def _rotation(frame) -> int:
    """The display matrix's counter-clockwise rotation, snapped to a multiple of 90 degrees."""
    try:
        degrees = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return int(round((degrees or 0) / 90.0)) * 90 % 360


def _check_length(info: VideoInfo, sampling: SamplingConfig) -> None:
    if info.duration_s < sampling.min_duration_s or info.frame_count < sampling.min_frames:
        raise _fail(
            ErrorType.TOO_SHORT,
            f"{Path(info.path).name} lasts {info.duration_s:.2f} s / {info.frame_count} frames; "
            f"the recipe needs at least {sampling.min_duration_s} s and "
            f"{sampling.min_frames} frames",
        )


def _preview(ts: np.ndarray, n: int = 4) -> str:
    shown = ", ".join(f"{t:.3f}" for t in ts[:n])
    return f"[{shown}{', ...' if len(ts) > n else ''}] s"


def _replace(info: VideoInfo, **changes) -> VideoInfo:
    import dataclasses

    return dataclasses.replace(info, **changes)


def _fail(type: ErrorType, message: str, *, hint: str | None = None) -> VideoError:
    return VideoError(type, message, stage=Stage.PROBE, hint=hint)
