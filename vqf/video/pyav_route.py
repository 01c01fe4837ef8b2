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
from typing import NamedTuple

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
            # a stream whose size changes midway is scaled to its first size, the probe's
            stored = (stream.codec_context.width, stream.codec_context.height)
            for index, frame in enumerate(container.decode(stream)):
                if counter is not None:
                    counter["decoded"] = index + 1
                if index != wanted[pos]:
                    continue
                if size is not None or (frame.width, frame.height) != stored:
                    width, height = size or stored
                    frame = frame.reformat(
                        width=width, height=height, format="rgb24", interpolation=interpolation
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


class Seeked(NamedTuple):
    """Frames found by seeking: `frames` (F, H, W, 3), how many the decoder went through, and
    whether a seek landed where the probe's numbering could not place it (`fell_back`): those
    frames were then found by decoding forward instead."""

    frames: np.ndarray
    decoded: int
    fell_back: bool


# A seek that lands late is retried from up to this many earlier keyframes before the video
# is decoded forward from its start.
SEEK_RETRIES = 2
# AVI stores no presentation times: FFmpeg guesses them, and packed B-frames (MPEG-4 Part 2)
# leave a frame's guess swapped with a neighbour's. There a frame may sit this far from its
# timestamp's place and still be counted; elsewhere a frame must sit exactly at its tick.
REORDER_SLACK = 2


def seek_frames(
    path: str | Path, frames: np.ndarray, *, pts: np.ndarray, keyframes: np.ndarray
) -> Seeked:
    """The frames at display-order indices `frames`, found by seeking to their keyframes.

    Each group of wanted frames that share a keyframe costs one seek and the decode from that
    keyframe to the group's last frame (a few GOPs for a few frames, never the whole video).
    `pts` are the stream's sorted presentation ticks and `keyframes` the display indices a seek
    can land on (both from the probe). A seek must land on its keyframe's exact tick; from
    there frames are counted in the order the decoder shows them, as a decode from the start
    counts them. Where it lands elsewhere (streams whose seeks land a keyframe late, as MPEG
    program and transport streams do; timestamps in decode order; start offsets), earlier
    keyframes are tried, and then the rest is decoded forward from the start: the frames are
    always those `iter_frames` gives, and the video fails only when they are not in the file.
    """
    import av

    wanted = np.asarray(frames, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(wanted)
    todo: dict[int, list[int]] = {}
    for slot in np.argsort(wanted, kind="stable"):
        todo.setdefault(int(wanted[slot]), []).append(int(slot))
    keys = np.asarray(keyframes, dtype=np.int64)
    counter = {"decoded": 0}
    fell_back = False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stored = (stream.codec_context.width, stream.codec_context.height)
            fresh = True  # nothing read yet: "seeking" to frame 0 is reading on
            while todo:
                first = min(todo)
                key = int(keys[max(0, np.searchsorted(keys, first, side="right") - 1)])
                group = {i: s for i, s in todo.items() if i < _next_key(keys, key)}
                if key == 0 and fresh:
                    found = _take(container.decode(stream), 0, group, out, counter) or None
                else:
                    found = _seek_group(container, stream, key, keys, group, out, pts, counter)
                fresh = False
                fell_back = fell_back or not found
                if found is None:
                    break
                for i in group:
                    todo.pop(i)
        if todo:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                _take(container.decode(stream), 0, todo, out, counter)
    except av.error.FFmpegError as e:
        raise _failed(f"{Path(path).name}: FFmpeg stopped while seeking: {e}") from None
    missing = [int(wanted[s]) for s, f in enumerate(out) if f is None]
    if missing:
        raise _failed(
            f"{Path(path).name}: no frame {missing[0]} in the file, decoding forward from the "
            f"start ({len(missing)} of {len(wanted)} wanted frames missing)"
        )
    frames_out = np.stack([_fit(picture, size=stored) for picture in out])
    return Seeked(frames_out, counter["decoded"], fell_back)


def _fit(picture: np.ndarray, *, size: tuple[int, int]) -> np.ndarray:
    """`picture` at the stream's first size (width, height): a stream whose size changes
    midway is scaled to the size the probe read, as the decode route does."""
    import av

    if (picture.shape[1], picture.shape[0]) == size:
        return picture
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
    return frame.reformat(width=size[0], height=size[1]).to_ndarray(format="rgb24")


def _next_key(keys: np.ndarray, key: int) -> int:
    at = int(np.searchsorted(keys, key, side="right"))
    return int(keys[at]) if at < len(keys) else 1 << 62


def _seek_group(container, stream, key, keys, group, out, pts, counter) -> bool | None:
    """Seeks to keyframe `key` and takes `group`'s frames: True when the seek landed on a
    keyframe at or before `key`, False when it landed late but a seek to an earlier keyframe
    (up to SEEK_RETRIES) did not, None when none did or the numbering slipped."""
    at = int(np.searchsorted(keys, key))
    for tries, target in enumerate(keys[max(0, at - SEEK_RETRIES) : at + 1][::-1]):
        container.seek(int(pts[target]), stream=stream, backward=True, any_frame=False)
        frames = container.decode(stream)
        landed = _land(frames, int(target), key, keys, pts, counter)
        if landed is None:
            continue
        index, frame = landed
        slack = REORDER_SLACK if container.format.name == "avi" else 0
        if not _take(frames, index, group, out, counter, first=frame, pts=pts, slack=slack):
            return None
        return tries == 0
    return None


def _land(frames, target: int, key: int, keys: np.ndarray, pts: np.ndarray, counter):
    """(display index, frame) of the first frame a seek gives when it is a keyframe at or
    before `key`, found by its exact tick; frames before `target` are lead-in (open-GOP
    frames that need a picture from before the seek point) and are passed over. Else None."""
    for frame in frames:
        counter["decoded"] += 1
        if frame.pts is None:
            return None
        index = int(np.searchsorted(pts, frame.pts))
        exact = index < len(pts) and pts[index] == frame.pts
        if exact and index <= key and index in keys:
            return index, frame
        if exact and index < target:
            continue
        return None
    return None


def _take(frames, index, group, out, counter, *, first=None, pts=None, slack=0) -> bool:
    """Counts frames from display index `index` in the decoder's order and keeps `group`'s
    (index -> output slots); with `pts`, a frame whose tick is more than `slack` places from
    its count means the numbering slipped (timestamps that go back, dropped frames). True when every frame of the group was found."""
    last = max(group)

    def check(frame, index) -> bool:
        if pts is None:
            return True
        if frame.pts is None:
            return False
        return abs(int(np.searchsorted(pts, frame.pts)) - index) <= slack

    stream = frames if first is None else _chain(first, frames)
    for n, frame in enumerate(stream):
        if first is None or n > 0:
            counter["decoded"] += 1
        if not check(frame, index):
            return False
        if index in group:
            picture = frame.to_ndarray(format="rgb24")
            for slot in group[index]:
                out[slot] = picture
        if index >= last:
            return True
        index += 1
    return False


def _chain(first, rest):
    yield first
    yield from rest


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
