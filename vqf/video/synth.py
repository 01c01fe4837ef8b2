"""Synthetic videos, encoded with PyAV: the tests' inputs and the demo's corpus.

Every frame of the "moving" pattern is distinguishable from its neighbours (a gradient that
shifts, a box that travels, and the frame number written as a bar of black/white cells), so a
decode that returns the wrong frame shows up as a large pixel difference. A red marker sits in
the top-left corner of the *displayed* picture: the stored picture is rotated the other way
and the container's display matrix says how to turn it back, as phones do.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

CODECS = {
    # name -> (encoder, pixel format, encoder options)
    "h264": ("libx264", "yuv420p", {"preset": "veryfast", "crf": "16", "tune": "zerolatency"}),
    "hevc": (
        "libx265",
        "yuv420p",
        {
            "preset": "ultrafast",
            "crf": "18",
            "x265-params": "log-level=error",
        },
    ),
    "vp9": (
        "libvpx-vp9",
        "yuv420p",
        {"deadline": "realtime", "cpu-used": "8", "crf": "12", "b": "0"},
    ),
    "mjpeg": ("mjpeg", "yuvj420p", {"qmin": "1", "qmax": "3"}),
    "mpeg4": ("mpeg4", "yuv420p", {"qmin": "1", "qmax": "3"}),
}
PATTERNS = ("moving", "still", "noise")
ROTATIONS = (0, 90, 180, 270)
BITS = 10  # frame-number cells in the bar: 1024 distinct frames before it wraps
MARKER = (230, 20, 20)


def make_video(
    path: str | Path,
    *,
    codec: str = "h264",
    width: int = 64,
    height: int = 48,
    seconds: float = 1.0,
    fps: float = 10.0,
    vfr: bool = False,
    rotation: int = 0,
    pattern: str = "moving",
    seed: int = 0,
    pix_fmt: str | None = None,
    audio: bool = False,
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encodes a synthetic video at `path` (the container follows the suffix) and returns it.

    `width`/`height` are the displayed size; with `rotation` 90/270 the stored frames are
    `height` x `width` and the display matrix turns them upright (counter-clockwise degrees).
    `vfr` spaces frames irregularly (0.4x..1.6x the nominal interval, seeded).
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not one of {', '.join(CODECS)}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is not one of {', '.join(PATTERNS)}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation {rotation!r} is not one of {ROTATIONS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rotation and codec == "hevc":
        # PyAV 18 corrupts the heap when it writes a display matrix next to an HEVC stream
        # (encoded or remuxed); the crash comes later, somewhere else, so refuse up front.
        raise ValueError("rotated HEVC cannot be written with PyAV 18; rotate an H.264 video")
    encoder, default_fmt, default_opts = CODECS[codec]
    n = max(1, round(seconds * fps))
    # MPEG-4 part 2 caps the time base denominator at 65535
    ticks = 1000 if codec == "mpeg4" else 90000
    pts = frame_times(n, fps=fps, vfr=vfr, seed=seed, ticks=ticks)
    time_base = Fraction(1, ticks)
    turn = rotation
    stored_w, stored_h = (height, width) if turn in (90, 270) else (width, height)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = stored_w, stored_h
        stream.pix_fmt = pix_fmt or default_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = {**default_opts, **(options or {})}
        if gop:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        sound = _add_audio(container) if audio else None
        for i, t in enumerate(pts):
            picture = draw_frame(i, width=width, height=height, pattern=pattern, rng=rng)
            stored = np.ascontiguousarray(np.rot90(picture, -turn // 90))
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if sound is not None:
            _write_audio(container, sound, seconds=seconds)
    return path


def make_audio(path: str | Path, *, seconds: float = 1.0) -> Path:
    """Encodes an audio-only file (AAC in the container the suffix names)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        _write_audio(container, _add_audio(container), seconds=seconds)
    return path


def frame_times(
    n: int, *, fps: float, vfr: bool = False, seed: int = 0, ticks: int = 90000
) -> np.ndarray:
    """Presentation times in seconds of `n` frames; irregular when `vfr`."""
    step = np.full(n, 1.0 / fps)
    if vfr:
        step *= np.random.default_rng(seed + 1).uniform(0.4, 1.6, size=n)
    # whole ticks of the stream's time base, so that the muxer stores exactly these times
    return np.round(np.concatenate([[0.0], np.cumsum(step)[:-1]]) * ticks) / ticks


def draw_frame(
    index: int, *, width: int, height: int, pattern: str = "moving", rng=None
) -> np.ndarray:
    """The displayed picture of frame `index` as (height, width, 3) uint8 RGB."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if pattern == "noise":
        rng = rng or np.random.default_rng(index)
        img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        shift = 0 if pattern == "still" else index * 7
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = ((x + shift) * 255 / max(width, 1)) % 256
        img[..., 1] = (y * 255 / max(height, 1)) % 256
        img[..., 2] = 96
        if pattern == "moving":
            _draw_box(img, index)
            _draw_number(img, index)
    m = max(2, min(width, height) // 6)
    img[:m, :m] = MARKER
    return img


def _draw_box(img: np.ndarray, index: int) -> None:
    h, w = img.shape[:2]
    size = max(2, min(h, w) // 4)
    x0 = (index * 5) % max(1, w - size)
    y0 = (index * 3) % max(1, h - size)
    img[y0 : y0 + size, x0 : x0 + size] = (255, 255, 255)


def _draw_number(img: np.ndarray, index: int) -> None:
    """Bottom bar: BITS cells, white for a set bit of the frame number, black otherwise."""
    h, w = img.shape[:2]
    bar = max(2, h // 8)
    cell = w // BITS
    for bit in range(BITS):
        on = (index >> bit) & 1
        img[h - bar :, bit * cell : (bit + 1) * cell] = 255 if on else 0


def _add_audio(container):
    stream = container.add_stream("aac", rate=16000)
    stream.layout = "mono"
    return stream


def _write_audio(container, stream, *, seconds: float) -> None:
    import av

    rate, chunk = 16000, 1024
    total = int(seconds * rate)
    t = np.arange(total, dtype=np.float32) / rate
    wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, total, chunk):
        block = wave[start : start + chunk][None, :]
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
