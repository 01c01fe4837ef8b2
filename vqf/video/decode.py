"""Running batches through the plane's pipelines, with per-video failure isolation.

DALI invalidates a pipeline after an operator error, and the error does not say which sample
caused it. So a failed batch rebuilds the pipeline and runs its videos one by one: the bad
one gets its VideoError, every other video its result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vqf.errors import ErrorType, Stage, VideoError
from vqf.video.graph import clip_inputs, detect_inputs, run_pipeline, to_torch

if TYPE_CHECKING:
    from vqf.video.plane import Decoded, DetectFrames, Prepared, Roi, VideoPlane

DALI_ROUTES = ("nvdec", "dali-cpu")


def decode_batch(
    plane: VideoPlane, batch: list[Prepared], rois: list[Roi | None]
) -> list[Decoded | VideoError]:
    """Decodes every video of `batch` on its route; results keep the batch's order."""
    results: list = [None] * len(batch)
    size = plane.recipe.decode.batch_size
    for route in ("nvdec", "dali-cpu", "pyav"):
        slots = [i for i, p in enumerate(batch) if p.route == route]
        for start in range(0, len(slots), size):
            group = slots[start : start + size]
            run = _run_dali if route in DALI_ROUTES else _run_pyav
            outs = run(plane, route, [batch[i] for i in group], [rois[i] for i in group])
            for i, out in zip(group, outs, strict=True):
                results[i] = out
    return results


def decode_detect(plane: VideoPlane, prepared: Prepared) -> DetectFrames:
    """Decodes and letterboxes the plan's detection frames of one video."""
    from vqf.video.plane import DetectFrames
    from vqf.video.pyav_route import decode_all

    info, indices = prepared.info, prepared.plan.detect_frames
    inputs, letterbox = detect_inputs(
        width=info.width,
        height=info.height,
        rotation=info.rotation,
        size=plane.recipe.sampling.detect_size,
    )
    route = prepared.route
    try:
        if route in DALI_ROUTES:
            inputs.update(_encoded(prepared, indices))
        else:
            inputs["raw"] = decode_all(prepared.path, indices)
        out = run_pipeline(plane.pipeline(route, "detect"), {k: [v] for k, v in inputs.items()})
        frames = to_torch(out, 0)
    except VideoError as e:
        raise VideoError(e.type, e.message, stage=Stage.DETECT, hint=e.hint) from None
    except Exception as e:  # DALI raises RuntimeError for anything its operators reject
        plane.rebuild(route, "detect")
        raise _failed(prepared, e, stage=Stage.DETECT) from None
    _check_count(prepared, frames, len(indices), stage=Stage.DETECT)
    return DetectFrames(frames=frames, indices=indices, letterbox=letterbox)


def _run_dali(plane, route, group, rois):
    samples = []
    for prepared, roi in zip(group, rois, strict=True):
        try:
            samples.append(
                {**_encoded(prepared, prepared.plan.frames), **_geometry(plane, prepared, roi)}
            )
        except VideoError as e:
            samples.append(e)
    outs = _run_isolated(plane, route, group, samples)
    return [_decoded(prepared, out) for prepared, out in zip(group, outs, strict=True)]


def _run_isolated(plane, route, group, samples):
    """Runs the ready samples together; on failure rebuilds and retries them one at a time.
    Returns a tensor or a VideoError per sample."""
    ready = [i for i, s in enumerate(samples) if not isinstance(s, VideoError)]
    results = list(samples)
    try:
        outs = _run(plane, route, [samples[i] for i in ready])
    except Exception as e:
        plane.rebuild(route, "clip")
        if len(ready) == 1:
            results[ready[0]] = _failed(group[ready[0]], e)
            return results
        outs = []
        for i in ready:
            try:
                outs.append(_run(plane, route, [samples[i]])[0])
            except Exception as single:
                plane.rebuild(route, "clip")
                outs.append(_failed(group[i], single))
    for i, out in zip(ready, outs, strict=True):
        results[i] = out
    return results


def _run(plane, route, samples: list[dict]):
    if not samples:
        return []
    pipe = plane.pipeline(route, "clip")
    out = run_pipeline(pipe, {k: [s[k] for s in samples] for k in samples[0]})
    return [to_torch(out, k) for k in range(len(samples))]


def _run_pyav(plane, route, group, rois):
    """Decodes each video in its own thread and sends chunks of all of them through the graph
    together, so FFmpeg decodes the next chunks while the graph resizes this one."""
    import torch

    from vqf.video.pyav_route import DONE, ChunkProducer, shrink_size

    chunk = max(1, plane.recipe.decode.chunk_frames)
    geometry = {
        i: _geometry(plane, p, roi) for i, (p, roi) in enumerate(zip(group, rois, strict=True))
    }
    producers = {}
    for i, p in enumerate(group):
        g = geometry[i]
        size = shrink_size(
            width=p.info.width,
            height=p.info.height,
            roi=g["roi"],
            size=g["size"],
            factor=plane.recipe.decode.prescale,
        )
        producers[i] = ChunkProducer(p.path, p.plan.frames, chunk=chunk, size=size)
    parts: dict[int, list] = {i: [] for i in producers}
    results: list = [None] * len(group)
    try:
        while producers:
            ready, samples = [], []
            for i, producer in list(producers.items()):
                item = producer.get()
                if item is DONE or isinstance(item, Exception):
                    del producers[i]
                    if isinstance(item, Exception):
                        results[i] = _as_video_error(group[i], item)
                    continue
                ready.append(i)
                samples.append({"raw": item, **geometry[i]})
            outs = _run_isolated(plane, route, [group[i] for i in ready], samples) if ready else []
            for i, out in zip(ready, outs, strict=True):
                if isinstance(out, VideoError):
                    results[i] = out
                    producers.pop(i).close()
                else:
                    parts[i].append(out)
    finally:
        for producer in producers.values():
            producer.close()
    for i, prepared in enumerate(group):
        if results[i] is None:
            frames = torch.cat(parts[i]) if len(parts[i]) > 1 else parts[i][0]
            results[i] = _decoded(prepared, frames)
    return results


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


def _decoded(prepared: Prepared, frames):
    from vqf.video.plane import Decoded

    if isinstance(frames, VideoError):
        return frames
    try:
        _check_count(prepared, frames, len(prepared.plan.frames), stage=Stage.DECODE)
    except VideoError as e:
        return e
    return Decoded(info=prepared.info, plan=prepared.plan, frames=frames, route=prepared.route)


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
