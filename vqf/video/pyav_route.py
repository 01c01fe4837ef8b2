"""The pyav route: FFmpeg decodes on the CPU, the DALI graph does the rest.

Frames are decoded in display order and only the plan's frames are converted to RGB; they
leave in chunks of `chunk` frames so host memory stays bounded however long the video is.
PyAV releases the GIL while decoding, so a few videos decode at once in plain threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vqf.errors import ErrorType, Stage, VideoError

DONE = object()
# swscale's shrink: bilinear (its filter widens with the scale, so it antialiases) with chroma
# at full resolution on the way in and out (SWS_BILINEAR | SWS_FULL_CHR_H_INT |
# SWS_FULL_CHR_H_INP). Straight to the clip size it stays within about a level of an
# antialiased resize of the RGB frames on real footage (`vqf bench-video --accuracy`).
SHRINK = 0x2 | 0x2000 | 0x4000


def iter_frames(
    path: str | Path,
    frames: np.ndarray,
    *,
    chunk: int = 64,
    size: tuple[int, int] | None = None,
    interpolation: str | int = SHRINK,
    counter: dict | None = None,
) -> Iterator[np.ndarray]:
    """Yields the frames at display-order indices `frames` (sorted, distinct) as RGB uint8
    arrays (F, H, W, 3) of at most `chunk` frames, stored orientation.

    `size` (width, height) lets swscale shrink while it converts YUV to RGB, a pass it makes
    over every pixel anyway; the graph then crops and resizes from a picture near its output
    size instead of the full frame (on a CPU, antialiased resizing of full frames costs ten
    times the decode). `counter["decoded"]` counts the frames FFmpeg decoded.
    """
    import av

    wanted = np.asarray(frames, dtype=np.int64)
    if len(wanted) == 0:
        return
    buffer, pos = [], 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if counter is not None:
                    counter["decoded"] = index + 1
                if index != wanted[pos]:
                    continue
                if size is not None:
                    frame = frame.reformat(
                        width=size[0], height=size[1], format="rgb24", interpolation=interpolation
                    )
                buffer.append(frame.to_ndarray(format="rgb24"))
                pos += 1
                if len(buffer) == chunk or pos == len(wanted):
                    yield np.stack(buffer)
                    buffer = []
                if pos == len(wanted):
                    return
    except av.error.FFmpegError as e:
        raise _failed(
            f"{Path(path).name}: FFmpeg stopped at frame {pos} of the plan: {e}"
        ) from None
    raise _failed(
        f"{Path(path).name}: the stream ended before frame {int(wanted[pos])} "
        f"({pos} of {len(wanted)} planned frames decoded)"
    )


def decode_all(path: str | Path, frames: np.ndarray) -> np.ndarray:
    """All of `frames` in one array (F, H, W, 3), decoding from the start (a reference)."""
    return np.concatenate(list(iter_frames(path, frames, chunk=max(1, len(frames)))))


def seek_frames(
    path: str | Path, frames: np.ndarray, *, pts: np.ndarray, keyframes: np.ndarray
) -> tuple[np.ndarray, int]:
    """The frames at display-order indices `frames` (F, H, W, 3), found by seeking.

    Each group of wanted frames that share a keyframe costs one seek and the decode from that
    keyframe to the group's last frame (a few GOPs for a few frames, never the whole video).
    `pts` are the stream's sorted presentation ticks and `keyframes` the display indices a seek
    can land on (both from the probe). Returns the frames and how many were decoded.
    """
    import av

    wanted = np.asarray(frames, dtype=np.int64)
    order = np.argsort(wanted, kind="stable")
    out: list[np.ndarray | None] = [None] * len(wanted)
    decoded = 0
    groups: dict[int, list[int]] = {}
    for slot in order:
        key = int(keyframes[max(0, np.searchsorted(keyframes, wanted[slot], side="right") - 1)])
        groups.setdefault(key, []).append(int(slot))
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for key, slots in groups.items():
                container.seek(int(pts[key]), stream=stream, backward=True, any_frame=False)
                last = int(wanted[slots[-1]])
                todo = {int(wanted[s]): [] for s in slots}
                for s in slots:
                    todo[int(wanted[s])].append(s)
                for frame in container.decode(stream):
                    decoded += 1
                    if frame.pts is None:
                        continue
                    index = int(np.searchsorted(pts, frame.pts))
                    if index in todo:
                        picture = frame.to_ndarray(format="rgb24")
                        for s in todo.pop(index):
                            out[s] = picture
                    if index >= last or not todo:
                        break
    except av.error.FFmpegError as e:
        raise _failed(f"{Path(path).name}: FFmpeg stopped while seeking: {e}") from None
    missing = [int(wanted[s]) for s, f in enumerate(out) if f is None]
    if missing:
        raise _failed(
            f"{Path(path).name}: seeking found no frame {missing[0]} "
            f"({len(missing)} of {len(wanted)} wanted frames missing)"
        )
    return np.stack(out), decoded


class ChunkProducer:
    """Decodes one video's frames in a thread into a small queue (decode overlaps the graph)."""

    def __init__(
        self,
        path: str | Path,
        frames: np.ndarray,
        *,
        chunk: int,
        size: tuple[int, int] | None = None,
        depth: int = 2,
    ):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.counter = {"decoded": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(path, frames, chunk, size), name="vqf-pyav", daemon=True
        )
        self._thread.start()

    def _run(self, path, frames, chunk, size) -> None:
        try:
            for block in iter_frames(path, frames, chunk=chunk, size=size, counter=self.counter):
                if self._stop.is_set():
                    return
                self.queue.put(block)
            self.queue.put(DONE)
        except Exception as e:  # handed to the consumer, who turns it into this video's error
            self.queue.put(e)

    def get(self):
        """The next chunk, DONE, or the exception that ended decoding."""
        return self.queue.get()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


def shrink_size(
    *, width: int, height: int, roi: np.ndarray, size: np.ndarray, factor: float
) -> tuple[int, int] | None:
    """A (width, height) at which the graph's ROI still has `factor` x `size` pixels.

    `roi` is [y0, x0, y1, x1] relative and `size` [h, w], as the clip head takes them. The
    margin (`decode.prescale`) leaves the last, antialiased resize to the graph, so frames
    stay close to the other routes'. None when shrinking is off or would not shrink.
    """
    if factor <= 0:
        return None
    roi_h, roi_w = float(roi[2] - roi[0]), float(roi[3] - roi[1])
    fx = min(1.0, factor * float(size[1]) / max(roi_w * width, 1e-6))
    fy = min(1.0, factor * float(size[0]) / max(roi_h * height, 1e-6))
    if fx >= 1.0 and fy >= 1.0:
        return None
    return max(1, int(np.ceil(width * fx))), max(1, int(np.ceil(height * fy)))


def _failed(message: str) -> VideoError:
    return VideoError(ErrorType.DECODE_FAILED, message, stage=Stage.DECODE)
