"""DALI graphs: decode (or take raw frames), rotate, crop, resize, normalise.

Small pipelines, one per (route, head), share two heads. A *source* gives uint8 frames
(F, H, W, C) as stored in the file. On `nvdec` and `dali-cpu` (device "mixed" or "cpu") the
clip head streams: `fn.experimental.inputs.video` takes a video's bytes once and each run
decodes the next `stream_frames` consecutive frames, of which `pick` (positions in that
run's sequence) go on to the head, so a video of any length is parsed once and decoded once,
front to back, in bounded memory. On `nvdec` the detect head runs `fn.decoders.video` once
per video with `frames=` the few detection frames (it seeks to them); on the CPU, FFmpeg seeks
to them and the `pyav` source takes them. `pyav` takes frames FFmpeg already decoded on the
CPU. On a GPU rank every source moves to the GPU before the
head, so all routes share one definition of preprocessing. A *head*
turns them into model input: `clip` crops the region of interest and resizes to the clip size,
applies the display rotation, and normalises to FCHW (FP16 on GPU, float32 on CPU); `detect`
letterboxes to detect_size x detect_size as float 0..1 FCHW, and also hands out the same frames
as decoded (uint8 FHWC, stored orientation, on the pipeline's device) for measures of detail
at the decoded resolution. Rotation runs after the resize,
on the small picture: a quarter turn commutes with resizing, so the result equals rotating
first, at a fraction of the cost. The ROI is mapped into stored-frame coordinates to match.

Per-sample inputs (all float32): `roi` [y0, x0, y1, x1] relative to the stored frame, `size`
[h, w] before rotation, `angle` counter-clockwise degrees.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from vqf.config import SamplingConfig
from vqf.video.geometry import LETTERBOX_FILL, Letterbox, displayed_size, stored_roi

Source = Literal["nvdec", "dali-cpu", "pyav"]
Head = Literal["clip", "detect"]
STREAMING = ("nvdec", "dali-cpu")  # sources whose clip head streams the video's bytes


def build_pipeline(
    *,
    source: Source,
    head: Head,
    sampling: SamplingConfig,
    batch_size: int,
    device_id: int | None,
    num_threads: int = 2,
    stream_frames: int = 64,
    resize: bool = True,
    rotate: bool = True,
    shift: float = 0.0,
):
    """Builds one pipeline; `device_id=None` keeps everything on the CPU. A streaming source
    (a DALI route's clip head) has two outputs: the head's, and the run's decoded sequence,
    read for its length only (a run shorter than `stream_frames` ends the video). A clip head
    without `resize` takes frames already at the clip size (swscale made them), one without
    `rotate` frames already upright: each step costs a pass over every pixel on a CPU, and
    most videos need neither or only one (`clip_feed` keeps the inputs such a head reads).
    `shift` (0..255 levels) is taken off every pixel as it is normalised: a source's known
    offset (swscale's shrink renders about a level brighter than FFmpeg's plain conversion)."""
    from nvidia.dali import Pipeline

    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        # unpinned worker threads: several pipelines and ranks share the cores
        set_affinity=False,
        exec_dynamic=True,  # outputs stay valid after the next run: torch holds them via DLPack
        prefetch_queue_depth=1,  # we feed, then run: nothing to prefetch
    )
    gpu = device_id is not None
    with pipe:
        steps = {"resize": resize, "rotate": rotate, "shift": shift}
        if head == "clip" and source in STREAMING:
            frames, sequence = _stream_source(source, gpu=gpu, length=stream_frames)
            pipe.set_outputs(_clip_head(frames, sampling, gpu=gpu, **steps), sequence)
        elif head == "clip":
            pipe.set_outputs(_clip_head(_source(source, gpu=gpu), sampling, gpu=gpu, **steps))
        else:  # the letterboxed frames, and the same frames as decoded for measures of detail
            frames = _source(source, gpu=gpu)
            pipe.set_outputs(_detect_head(frames), frames)
    pipe.build()
    return pipe


def run_pipeline(pipe, inputs: dict[str, list[np.ndarray]]):
    """Feeds one batch (the same number of samples under every name) and runs it: the output,
    or a tuple of them for a head with several (detect)."""
    outs = run_outputs(pipe, inputs)
    return outs[0] if len(outs) == 1 else outs


def run_outputs(pipe, inputs: dict[str, list[np.ndarray]]) -> tuple:
    """Feeds one batch and runs it; every output of the pipeline."""
    for name, batch in inputs.items():
        pipe.feed_input(name, batch)
    return tuple(pipe.run())


def to_torch(batch, index: int):
    """Sample `index` of a pipeline output as a torch tensor, without a copy (DLPack)."""
    import torch

    return torch.from_dlpack(batch[index])


def _source(source: Source, *, gpu: bool):
    from nvidia.dali import fn, types

    if source == "nvdec" and not gpu:
        raise ValueError("the nvdec route needs a GPU pipeline (device_id)")
    if source == "pyav":
        frames = fn.external_source(name="raw", dtype=types.UINT8, layout="FHWC", ndim=4)
    else:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        indices = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        decoder = "mixed" if source == "nvdec" else "cpu"
        # pad_mode "none": a frame the stream lacks is an error, never a silent black frame
        # affine=False: several pipelines and ranks share the host's cores, none pins them
        options = {"affine": False} if decoder == "mixed" else {}
        frames = fn.decoders.video(
            encoded, frames=indices, device=decoder, pad_mode="none", **options
        )
    return frames.gpu() if gpu and source != "nvdec" else frames


def _stream_source(source: Source, *, gpu: bool, length: int):
    """A video fed once as `encoded`; each run decodes its next `length` frames (fewer at the
    end) and keeps those at positions `pick`. Returns (picked frames, the run's sequence)."""
    from nvidia.dali import fn, types

    if source == "nvdec" and not gpu:
        raise ValueError("the nvdec route needs a GPU pipeline (device_id)")
    decoder = "mixed" if source == "nvdec" else "cpu"
    # affine=False: several pipelines and ranks share the host's cores, none pins them
    options = {"affine": False} if decoder == "mixed" else {}
    sequence = fn.experimental.inputs.video(
        name="encoded",
        sequence_length=length,
        device=decoder,
        last_sequence_policy="partial",
        # no_copy=True would spare a copy of the file, but DALI's CPU reader then holds on to
        # about 3 MB more after every run (measured: 740 MB -> 2.2 GB over 500 runs)
        **options,
    )
    pick = fn.external_source(name="pick", dtype=types.INT32, ndim=1)
    # the choice comes before any other work, and before a CPU decoder's frames move to the GPU
    frames = fn.sequence_rearrange(sequence, new_order=pick)
    return (frames.gpu() if gpu and decoder == "cpu" else frames), sequence


def _geometry(*names: str):
    """Per-sample argument inputs; a pipeline declares only those its head reads."""
    from nvidia.dali import fn, types

    ndim = {"roi": 1, "size": 1, "angle": 0}
    return [fn.external_source(name=n, dtype=types.FLOAT, ndim=ndim[n]) for n in names]


def _clip_head(
    frames, sampling: SamplingConfig, *, gpu: bool, resize: bool, rotate: bool, shift: float
):
    from nvidia.dali import fn, types

    if resize:
        roi, size = _geometry("roi", "size")
        frames = fn.resize(
            frames,
            roi_start=roi[0:2],
            roi_end=roi[2:4],
            roi_relative=True,
            resize_y=size[0],
            resize_x=size[1],
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
    if rotate:
        (angle,) = _geometry("angle")
        frames = fn.rotate(frames, angle=angle, interp_type=types.INTERP_NN, keep_size=False)
    return fn.crop_mirror_normalize(
        frames,
        dtype=types.FLOAT16 if gpu else types.FLOAT,
        output_layout="FCHW",
        mean=[255.0 * m + shift for m in sampling.mean],
        std=[255.0 * s for s in sampling.std],
    )


def _detect_head(frames):
    from nvidia.dali import fn, types

    size, angle = _geometry("size", "angle")
    frames = fn.resize(frames, resize_y=size[0], resize_x=size[1], interp_type=types.INTERP_LINEAR)
    frames = fn.rotate(frames, angle=angle, interp_type=types.INTERP_NN, keep_size=False)
    side = fn.external_source(name="side", dtype=types.INT32, ndim=1)
    # pad right and bottom to the square, so boxes map back with a scale and no offset
    frames = fn.pad(frames, axis_names="HW", shape=side, fill_value=LETTERBOX_FILL)
    return fn.crop_mirror_normalize(
        frames, dtype=types.FLOAT, output_layout="FCHW", mean=[0.0], std=[255.0]
    )


def clip_inputs(
    *, width: int, height: int, rotation: int, roi, sampling: SamplingConfig
) -> dict[str, np.ndarray]:
    """Per-sample geometry of the clip head for a stored `width` x `height` video."""
    quarter = rotation in (90, 270)
    out_h, out_w = (
        (sampling.width, sampling.height) if quarter else (sampling.height, sampling.width)
    )
    box = (0.0, 0.0, 1.0, 1.0) if roi is None else (roi.x0, roi.y0, roi.x1, roi.y1)
    x0, y0, x1, y1 = stored_roi(box, rotation=rotation)
    return {
        "roi": np.array([y0, x0, y1, x1], np.float32),
        "size": np.array([out_h, out_w], np.float32),
        "angle": np.array(rotation, np.float32),
    }


def clip_feed(geometry: dict[str, np.ndarray], *, resize: bool, rotate: bool) -> dict:
    """The per-sample inputs a clip head built with these steps reads, from `clip_inputs`."""
    names = (["roi", "size"] if resize else []) + (["angle"] if rotate else [])
    return {name: geometry[name] for name in names}


def detect_inputs(*, width: int, height: int, rotation: int, size: int):
    """Per-sample geometry of the detect head, and the letterbox that maps boxes back."""
    disp_w, disp_h = displayed_size(width=width, height=height, rotation=rotation)
    box = Letterbox.fit(width=disp_w, height=disp_h, size=size)
    new_w, new_h = box.resized
    pre_h, pre_w = (new_w, new_h) if rotation in (90, 270) else (new_h, new_w)
    inputs = {
        "size": np.array([pre_h, pre_w], np.float32),
        "angle": np.array(rotation, np.float32),
        "side": np.array([size, size], np.int32),
    }
    return inputs, box
