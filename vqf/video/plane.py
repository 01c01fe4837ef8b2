"""The rank's video plane: probe + plan per video, then batched decode through DALI graphs.

Why a thread pool and not DALI's parallel external source: `prepare()` (probe and plan) runs
in the engine's worker threads, and a video that fails there never enters a batch. DALI's
parallel external source runs callbacks in spawned processes that must return one sample for
every slot of a fixed-size batch: a failed fetch or probe could not leave the batch, it would
need a placeholder that still goes through the decoder, and the fetcher's tier statistics and
byte budget would live in other processes. So fetch+probe+plan stay in threads and the graph
only ever sees videos the probe accepted.

`Prepared` holds the path, not the bytes: prepared videos wait in the prefetch queue, and the
bytes are read when their batch is decoded (the file was just probed, so it is in page cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vqf.config import Recipe
from vqf.errors import ConfigError, ErrorType, Stage, VideoError
from vqf.video.geometry import Letterbox
from vqf.video.plan import Clip, SamplingPlan, make_plan
from vqf.video.probe import VideoInfo, probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roi:
    """A region of interest, relative 0..1, in the displayed (rotated) frame."""

    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True, eq=False)
class Prepared:
    """A probed and planned video, ready for a decode batch."""

    path: Path
    uri: str
    info: VideoInfo
    plan: SamplingPlan

    @property
    def route(self) -> str:
        return self.info.route

    def on_cpu(self, reason: str) -> Prepared:
        """The same video routed through FFmpeg on the CPU (NVDEC refused it: a size, level
        or profile past what this GPU's decoder takes); the graph and its output are the same."""
        import dataclasses

        info = dataclasses.replace(self.info, route="pyav", route_reason=reason[:200])
        return dataclasses.replace(self, info=info)


@dataclass(eq=False)
class Decoded:
    """The plan's frames, preprocessed, on the plane's device: (U, 3, H, W)."""

    info: VideoInfo
    plan: SamplingPlan
    frames: object  # torch.Tensor
    route: str
    _takes: dict = field(default_factory=dict, repr=False)

    def clip_tensor(self, clip: Clip):
        """The clip's frames (T, 3, H, W), gathered from the union on the device."""
        import torch

        take = self._takes.get(id(clip))
        if take is None:
            take = torch.from_numpy(clip.take).to(self.frames.device)
            self._takes[id(clip)] = take
        return self.frames.index_select(0, take)


@dataclass(frozen=True)
class DetectFrames:
    """Detection frames (D, 3, S, S) float 0..1 RGB, letterboxed; `indices` are frame numbers;
    `native` the same frames as decoded (D, H, W, 3) uint8, stored orientation, same device."""

    frames: object  # torch.Tensor
    indices: np.ndarray
    letterbox: Letterbox
    decoded: int = 0  # frames the decoder went through to reach them
    fell_back: bool = False  # a seek landed off the plan's numbering: decoded forward instead
    native: object = None  # torch.Tensor: the decoded frames at their own size (detail measures)


class VideoPlane:
    """Probe, plan and decode. One pipeline per (source, head), built once; a plane is used by
    one thread at a time (DALI pipelines are not shared between threads).

    `dense_fps` is the dense grid the plans carry; by default what the recipe's enabled frame
    filters read (`vqf.filters.dense_fps(recipe)`, 0 when none does), so no caller plans
    frames for nobody.
    """

    def __init__(self, *, recipe: Recipe, device: str, dense_fps: float | None = None):
        if device != "cpu" and not device.startswith("cuda"):
            raise ConfigError(f"device {device!r} is not allowed", hint="use cpu or cuda:N")
        if recipe.decode.route == "nvdec" and device == "cpu":
            raise ConfigError(
                "decode.route = 'nvdec' needs a GPU, but this rank runs on the CPU",
                hint="use decode.route=auto, dali-cpu or pyav",
            )
        self.recipe = recipe
        self.device = device
        if dense_fps is None:
            from vqf.filters import dense_fps as needed

            dense_fps = needed(recipe)
        self.dense_fps = float(dense_fps)
        self.device_id = None if device == "cpu" else int((device.split(":") + ["0"])[1])
        self._pipes: dict[tuple, object] = {}
        self._mid_stream: set[tuple] = set()  # clip pipelines that may hold a video unread
        self.rebuilds = 0

    # -- probe and plan -------------------------------------------------------------

    def prepare(self, fetched_path: Path, *, uri: str) -> Prepared:
        """Probes and plans one fetched file; raises VideoError. Safe in worker threads."""
        path = Path(fetched_path)
        info = probe(
            path, decode=self.recipe.decode, sampling=self.recipe.sampling, device=self.device
        )
        plan = make_plan(
            info.timestamps,
            sampling=self.recipe.sampling,
            duration_s=info.duration_s,
            dense_fps=self.dense_fps,
        )
        limit = self.recipe.decode.max_frames_decoded
        if limit and len(plan.frames) > limit:
            raise VideoError(
                ErrorType.TOO_LARGE,
                f"{path.name} needs {len(plan.frames)} decoded frames, over "
                f"decode.max_frames_decoded = {self.recipe.decode.max_frames_decoded}",
                stage=Stage.PLAN,
                hint="raise decode.max_frames_decoded or sampling.stride_s",
            )
        return Prepared(path=path, uri=uri, info=info, plan=plan)

    # -- main decode ----------------------------------------------------------------

    def stream(self, prepared: Prepared, *, roi: Roi | None = None, counter: dict | None = None):
        """The plan's frames in sorted chunks (`vqf.video.decode.Chunk`); raises VideoError."""
        from vqf.video.decode import stream

        return stream(self, prepared, roi=roi, counter=counter)

    def decode(
        self, batch: list[Prepared], *, rois: list[Roi | None] | None = None
    ) -> list[Decoded | VideoError]:
        """Decodes a batch; each slot holds that video's Decoded or its VideoError."""
        from vqf.video.decode import decode_batch

        rois = list(rois) if rois is not None else [None] * len(batch)
        if len(rois) != len(batch):
            raise ValueError(f"{len(rois)} rois for {len(batch)} videos")
        return decode_batch(self, batch, rois)

    def detect_frames(self, prepared: Prepared) -> DetectFrames:
        """The plan's detection frames, letterboxed to sampling.detect_size; raises VideoError."""
        from vqf.video.decode import decode_detect

        return decode_detect(self, prepared)

    # -- pipelines ------------------------------------------------------------------

    def pipeline(
        self, source: str, head: str, *, resize: bool = True, rotate: bool = True, shift=0.0
    ):
        """The pipeline for (source, head), built on first use; a clip head comes in variants
        without the resize or the rotation a video does not need, and with the level `shift`
        its source needs taken off (`graph.build_pipeline`)."""
        key = (source, head, resize, rotate, shift)
        if key not in self._pipes:
            from vqf.video.graph import build_pipeline

            self._pipes[key] = build_pipeline(
                source=source,
                head=head,
                sampling=self.recipe.sampling,
                batch_size=1,
                device_id=self.device_id,
                num_threads=max(1, self.recipe.decode.threads),
                stream_frames=max(1, self.recipe.decode.chunk_frames),
                resize=resize,
                rotate=rotate,
                shift=shift,
            )
        return self._pipes[key]

    def stream_pipeline(self, source: str, *, rotate: bool):
        """The clip pipeline of a streaming source (a DALI route), holding no other video: one
        left half-read (its reader stopped early) is dropped for a fresh one."""
        key = (source, "clip", True, rotate, 0.0)
        if key in self._mid_stream:
            self._pipes.pop(key, None)
        self._mid_stream.add(key)
        return self.pipeline(source, "clip", rotate=rotate)

    def stream_ended(self, source: str, *, rotate: bool) -> None:
        """The streaming source's video was read to its end: its pipeline takes the next one."""
        self._mid_stream.discard((source, "clip", True, rotate, 0.0))

    def warm_up(self, *, heads: tuple[str, ...] = ("clip",)) -> None:
        """Builds the pyav route's pipelines and runs each once on a blank frame, so a rank's
        first video does not pay DALI's one-off start-up (the other routes need a real file)."""
        from vqf.video.graph import detect_inputs, run_pipeline

        s = self.recipe.sampling
        for head in heads:
            if head == "clip":  # an upright video that swscale brings to the clip size
                from vqf.video.decode import swscale_shift

                sample = {"raw": np.zeros((1, s.height, s.width, 3), np.uint8)}
                pipe = self.pipeline(
                    "pyav", head, resize=False, rotate=False, shift=swscale_shift()
                )
            else:
                geometry, _ = detect_inputs(width=16, height=16, rotation=0, size=s.detect_size)
                sample = {"raw": np.zeros((1, 16, 16, 3), np.uint8), **geometry}
                pipe = self.pipeline("pyav", head)
            run_pipeline(pipe, {k: [v] for k, v in sample.items()})

    def rebuild(self, source: str, head: str) -> None:
        """Drops a pipeline DALI invalidated after an operator error; the next use rebuilds."""
        self.rebuilds += 1
        log.warning("rebuilding the %s/%s DALI pipeline after an error", source, head)
        for key in [k for k in self._pipes if k[:2] == (source, head)]:
            self._pipes.pop(key)
        self._mid_stream = {k for k in self._mid_stream if k[:2] != (source, head)}

    def close(self) -> None:
        self._pipes.clear()
        self._mid_stream.clear()
