"""Streaming a video's planned frames through the plane's pipelines, chunk by chunk.

One video per pipeline run: DALI invalidates a pipeline after an operator error and the error
does not say which sample caused it, so a video runs alone and a failure rebuilds the
pipeline and fails that video only. Parallelism comes from several pipelines in flight (the
engine's decode lanes), not from batching videos into one run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vqf.errors import ErrorType, Stage, VideoError
from vqf.video.graph import (
    clip_feed,
    clip_inputs,
    detect_inputs,
    run_outputs,
    run_pipeline,
    to_torch,
)

if TYPE_CHECKING:
    from vqf.video.plane import Decoded, DetectFrames, Prepared, Roi, VideoPlane

DALI_ROUTES = ("nvdec", "dali-cpu")


@dataclass(frozen=True, eq=False)
class Chunk:
    """Consecutive planned frames of one video, model-ready: `frames` (n, 3, H, W) holds the
    plan's frames at positions start .. start + n - 1 (positions index `plan.frames`)."""

    start: int
    frames: object  # torch.Tensor


def stream(
    plane: VideoPlane, prepared: Prepared, *, roi: Roi | None, counter: dict | None = None
) -> Iterator[Chunk]:
    """The plan's frames through the clip head in sorted chunks of at most decode.chunk_frames.

    Every planned frame is decoded once; only one chunk (and, on the pyav route, the next one
    FFmpeg is decoding) is in memory at a time. On DALI routes the video's bytes go to the
    lane's decoder once and are decoded front to back, chunk_frames frames a run, so the cost
    grows with the video's length and not with its square. `counter["decoded"]` counts the
    frames the decoder went through (FFmpeg's count on the pyav route, the runs' frames on
    DALI routes). Raises VideoError; a DALI failure rebuilds the pipeline first (DALI
    invalidates it).
    """
    counter = counter if counter is not None else {}
    counter.setdefault("decoded", 0)
    frames = prepared.plan.frames
    chunk = max(1, plane.recipe.decode.chunk_frames)
    geometry = _geometry(plane, prepared, roi)
    route = prepared.route
    rotate = prepared.info.rotation % 360 != 0
    if route in DALI_ROUTES:
        feed = clip_feed(geometry, resize=True, rotate=rotate)
        yield from _stream_dali(plane, prepared, feed, rotate=rotate, chunk=chunk, counter=counter)
        return
    from vqf.video.pyav_route import DONE, ChunkProducer

    size, resize = _swscale_size(plane, prepared, geometry)
    pipe = {"resize": resize, "rotate": rotate, "shift": 0.0 if size is None else swscale_shift()}
    feed = clip_feed(geometry, resize=resize, rotate=rotate)
    producer = ChunkProducer(prepared.path, frames, chunk=chunk, size=size)
    start = 0
    try:
        while True:
            block = producer.get()
            counter["decoded"] = producer.counter["decoded"]
            if block is DONE:
                break
            if isinstance(block, Exception):
                raise _as_video_error(prepared, block)
            out = _run_one(plane, route, prepared, {"raw": block, **feed}, **pipe)
            _check_count(prepared, out, len(block), stage=Stage.DECODE)
            yield Chunk(start=start, frames=out)
            start += len(block)
    finally:
        producer.close()
    if start != len(frames):
        raise _failed(prepared, RuntimeError(f"decoded {start} of {len(frames)} planned frames"))


def _stream_dali(plane, prepared: Prepared, feed: dict, *, rotate: bool, chunk: int, counter: dict):
    """The DALI routes' stream: one feed of the file, then one run per `chunk` frames of it.

    Run r decodes frames r * chunk .. r * chunk + chunk - 1 and keeps the planned ones; a run
    that holds none keeps its first frame and drops it (a selection may not be empty). The
    lane's pipeline is reused by its next video only once this one has run to its end (a
    short run); a video left half-read costs a fresh pipeline instead (a few milliseconds).
    """
    route, frames = prepared.route, prepared.plan.frames
    data = _encoded(prepared, frames)["encoded"]
    try:
        pipe = plane.stream_pipeline(route, rotate=rotate)
        pipe.feed_input("encoded", [data])
    except Exception as e:
        plane.rebuild(route, "clip")
        raise _failed(prepared, e) from None
    done, base, ended = 0, 0, False
    while done < len(frames) and not ended:
        stop = int(np.searchsorted(frames, base + chunk, side="left"))
        wanted = np.asarray(frames[done:stop] - base, dtype=np.int32)
        pick = wanted if len(wanted) else np.zeros(1, np.int32)
        sample = {"pick": pick, **feed}
        try:
            out, sequence = run_outputs(pipe, {k: [v] for k, v in sample.items()})
            read = int(sequence.shape()[0][0])
            picked = to_torch(out, 0)
        except Exception as e:
            plane.rebuild(route, "clip")
            raise _failed(prepared, e) from None
        del sequence  # the run's full-size frames: only their count was needed
        counter["decoded"] += read
        ended = read < chunk
        if ended:
            plane.stream_ended(route, rotate=rotate)  # DALI let go of the video
        if len(wanted) and read <= int(wanted[-1]):
            break
        if len(wanted):
            _check_count(prepared, picked, len(wanted), stage=Stage.DECODE)
            yield Chunk(start=done, frames=picked)
        done, base = stop, base + chunk
    if done < len(frames):
        raise _failed(
            prepared,
            RuntimeError(
                f"the stream ended after {counter['decoded']} frames, before planned frame "
                f"{int(frames[done])} ({done} of {len(frames)} planned frames decoded)"
            ),
        )


def decode_batch(
    plane: VideoPlane, batch: list[Prepared], rois: list[Roi | None]
) -> list[Decoded | VideoError]:
    """Each video's whole plan in one tensor (tools and tests; the engine streams instead)."""
    import torch

    from vqf.video.plane import Decoded

    results: list = []
    for prepared, roi in zip(batch, rois, strict=True):
        try:
            parts = [c.frames for c in stream(plane, prepared, roi=roi)]
        except VideoError as e:
            results.append(e)
            continue
        frames = torch.cat(parts) if len(parts) > 1 else parts[0]
        results.append(
            Decoded(info=prepared.info, plan=prepared.plan, frames=frames, route=prepared.route)
        )
    return results


def decode_detect(plane: VideoPlane, prepared: Prepared) -> DetectFrames:
    """Decodes and letterboxes the plan's detection frames of one video, seeking to them."""
    from vqf.video.plane import DetectFrames
    from vqf.video.pyav_route import seek_frames

    info, indices = prepared.info, prepared.plan.detect_frames
    inputs, letterbox = detect_inputs(
        width=info.width,
        height=info.height,
        rotation=info.rotation,
        size=plane.recipe.sampling.detect_size,
    )
    # NVDEC decodes them where the models run; on the CPU FFmpeg seeks to them through the
    # container's index, where DALI's CPU decoder would index the whole file (time and a copy
    # of its bytes that grow with the video's length) for a dozen frames
    source, fell_back = ("nvdec" if prepared.route == "nvdec" else "pyav"), False
    try:
        if source == "nvdec":
            inputs.update(_encoded(prepared, indices))
            decoded = sum(
                int(i) - _keyframe_before(info.keyframes, i) + 1 for i in np.unique(indices)
            )
        else:
            inputs["raw"], decoded, fell_back = seek_frames(
                prepared.path, indices, pts=info.pts, keyframes=info.keyframes
            )
        boxed, native = run_pipeline(
            plane.pipeline(source, "detect"), {k: [v] for k, v in inputs.items()}
        )
        frames, native = to_torch(boxed, 0), to_torch(native, 0)
    except VideoError as e:
        raise VideoError(e.type, e.message, stage=Stage.DETECT, hint=e.hint) from None
    except Exception as e:  # DALI raises RuntimeError for anything its operators reject
        plane.rebuild(source, "detect")
        raise _failed(prepared, e, stage=Stage.DETECT) from None
    _check_count(prepared, frames, len(indices), stage=Stage.DETECT)
    return DetectFrames(
        frames=frames,
        indices=indices,
        letterbox=letterbox,
        decoded=decoded,
        fell_back=fell_back,
        native=native,
    )


def _keyframe_before(keyframes: np.ndarray, index) -> int:
    if len(keyframes) == 0:
        return 0
    at = int(np.searchsorted(keyframes, int(index), side="right")) - 1
    return int(keyframes[max(at, 0)])


def _swscale_size(plane, prepared: Prepared, geometry: dict) -> tuple[tuple | None, bool]:
    """The (width, height) swscale shrinks the pyav route's frames to (None: it does not), and
    whether the graph must still resize: not when swscale already made the clip itself (the
    whole frame at `decode.prescale` 1, within a pixel of the clip size: rounding)."""
    from vqf.video.pyav_route import shrink_size

    size = shrink_size(
        width=prepared.info.width,
        height=prepared.info.height,
        roi=geometry["roi"],
        size=geometry["size"],
        factor=plane.recipe.decode.prescale,
    )
    whole = np.allclose(geometry["roi"], [0.0, 0.0, 1.0, 1.0])
    out_h, out_w = (int(v) for v in geometry["size"])
    if size is not None and whole and abs(size[0] - out_w) <= 1 and abs(size[1] - out_h) <= 1:
        return (out_w, out_h), False
    return size, True


@functools.cache
def swscale_shift() -> float:
    """How many levels brighter swscale's shrink (`pyav_route.SHRINK`) renders than FFmpeg's
    plain conversion at full size, which the other routes and the tests' reference see: about
    one on coloured pixels (its full-chroma path rounds differently). Measured once a process
    on flat patches of many colours, so a different FFmpeg brings its own figure."""
    import av

    from vqf.video.pyav_route import SHRINK

    rng = np.random.default_rng(0)
    frame = av.VideoFrame(128, 128, "yuv420p")
    for plane, cell, low, high in zip(frame.planes, (16, 8, 8), (40, 80, 80), (220, 176, 176)):
        values = np.kron(rng.integers(low, high, (8, 8)), np.ones((cell, cell))).astype(np.uint8)
        rows = np.zeros((plane.height, plane.line_size), np.uint8)
        rows[:, : values.shape[1]] = values
        plane.update(rows.tobytes())
    full = frame.reformat(format="rgb24").to_ndarray().astype(np.float64)
    small = frame.reformat(width=64, height=64, format="rgb24", interpolation=SHRINK)
    small = small.to_ndarray().astype(np.float64)
    # each patch's middle, where neither filter reaches a neighbouring patch
    a = full.reshape(8, 16, 8, 16, 3)[:, 6:10, :, 6:10].mean(axis=(1, 3))
    b = small.reshape(8, 8, 8, 8, 3)[:, 3:5, :, 3:5].mean(axis=(1, 3))
    return round(float((b - a).mean()), 2)


def _run_one(plane, route, prepared: Prepared, sample: dict, **variant):
    """One sample through the clip head; a DALI error rebuilds the pipeline and fails the video."""
    try:
        pipe = plane.pipeline(route, "clip", **variant)
        out = run_pipeline(pipe, {k: [v] for k, v in sample.items()})
        return to_torch(out, 0)
    except Exception as e:
        plane.rebuild(route, "clip")
        raise _failed(prepared, e) from None


def _encoded(prepared: Prepared, indices: np.ndarray) -> dict[str, np.ndarray]:
    try:
        data = np.fromfile(prepared.path, dtype=np.uint8)
    except OSError as e:
        raise VideoError(
            ErrorType.NOT_FOUND, f"{prepared.path} cannot be read: {e}", stage=Stage.DECODE
        ) from None
    return {"encoded": data, "frames": np.asarray(indices, dtype=np.int32)}


def _geometry(plane, prepared: Prepared, roi) -> dict[str, np.ndarray]:
    info = prepared.info
    return clip_inputs(
        width=info.width,
        height=info.height,
        rotation=info.rotation,
        roi=roi,
        sampling=plane.recipe.sampling,
    )


def _check_count(prepared: Prepared, frames, expected: int, *, stage: Stage) -> None:
    if frames.shape[0] != expected:
        raise VideoError(
            ErrorType.DECODE_FAILED,
            f"{prepared.path.name}: decoder returned {frames.shape[0]} frames, "
            f"the plan needs {expected}",
            stage=stage,
        )


def _as_video_error(prepared: Prepared, error: Exception) -> VideoError:
    return error if isinstance(error, VideoError) else _failed(prepared, error)


def _failed(prepared: Prepared, error: Exception, *, stage: Stage = Stage.DECODE) -> VideoError:
    return VideoError(
        ErrorType.DECODE_FAILED,
        f"{prepared.path.name} ({prepared.route}): {_reason(error)}",
        stage=stage,
    )


def _reason(error: Exception) -> str:
    """The operator's own words from a DALI error, without the pipeline traceback around them."""
    text = str(error)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1].split("C++ context", 1)[0]
    return " ".join(text.split())[:300] or type(error).__name__
