"""Thumbnails for the report page: a few frames of a local video, decoded with PyAV and
embedded as one base64 JPEG strip."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

FRAMES = 4  # frames per video thumbnail
THUMB_HEIGHT = 72


class Thumbnails:
    """Base64 JPEG strips of a few frames per video, decoded once per video."""

    def __init__(self, *, frames: int = FRAMES, height: int = THUMB_HEIGHT):
        self.frames = frames
        self.height = height
        self._cache: dict[str, str | None] = {}

    def get(self, row: dict[str, Any]) -> str | None:
        url = str(row.get("video_oss_url") or "")
        if url not in self._cache:
            self._cache[url] = self._make(url)
        return self._cache[url]

    def _make(self, url: str) -> str | None:
        path = Path(url[7:] if url.startswith("file://") else url)
        if "://" in url and not url.startswith("file://") or not path.is_file():
            return None  # remote or gone: the report still shows the scores
        try:
            pictures = sample_frames(path, count=self.frames, height=self.height)
        except Exception:  # a file the run could not decode either: no thumbnail
            return None
        if not pictures:
            return None
        return base64.b64encode(jpeg(np.concatenate(pictures, axis=1))).decode()


def sample_frames(path: Path, *, count: int, height: int) -> list[np.ndarray]:
    """`count` frames spread over the video, as (height, w, 3) RGB, w keeping the aspect."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        duration = duration or (container.duration or 0) / 1e6
        for t in (np.arange(count) + 0.5) * duration / count:
            # seek to the keyframe before t, then decode up to t: a few frames, not the video
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            frame = None
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= t - 1e-3:
                    break
            if frame is not None:
                width = max(2, round(frame.width * height / frame.height) // 2 * 2)
                out.append(frame.to_ndarray(format="rgb24", width=width, height=height))
    return out


def jpeg(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB as JPEG bytes, encoded by FFmpeg's MJPEG encoder."""
    from fractions import Fraction

    import av

    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb[: h // 2 * 2, : w // 2 * 2])
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = rgb.shape[1], rgb.shape[0]
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.options = {"qmin": "2", "qmax": "5"}
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)
