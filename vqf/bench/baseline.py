"""The seed's design, re-implemented to measure vqf against it on the same machine and videos.

What the seed does, and this module does on purpose:
- every filter decodes the video itself, with PyAV on the CPU (a video is decoded once per
  filter, not once per video);
- clips are resized and normalised on the CPU, then copied to the device;
- every filter has its own backbone instance, even where filters could share one;
- every worker thread owns its own copy of every model (per-model instance pools), and feeds
  them one video at a time (the clips of one video per call, never several videos).
Sampling, weights, dtype and clip size are vqf's, so the comparison isolates the design.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vqf.config import Recipe

log = logging.getLogger(__name__)

DESIGN = (
    "CPU decode per filter, frames copied to the device, one backbone per filter, "
    "a model instance per worker thread"
)


class SeedModels:
    """One worker's models: every model filter with a bank of its own (backbone or detector,
    and head), so filters that could share a backbone each run their own copy. Weight-free
    frame filters are not part of the seed's design and are left out."""

    def __init__(self, recipe: Recipe, *, device: str):
        from vqf.filters import FILTERS
        from vqf.models.bank import ModelBank

        self.filters: list[tuple[Any, Any]] = []  # (filter, its own bank)
        for name, spec in recipe.filters.items():
            cls = FILTERS.get(name)
            if not spec.enable or not (spec.model or cls.default_model):
                continue
            alone = replace(recipe, filters={name: spec})
            bank = ModelBank.load(recipe=alone, needs=[cls.needs(name, spec)], device=device)
            s = recipe.sampling  # the same warm-up vqf's bank gets
            bank.warm_up(
                frames=s.whole_frames, height=s.height, width=s.width, detect_size=s.detect_size
            )
            self.filters.append((cls(spec=spec, bank=bank), bank))


def decode_frames(path: str | Path, indices: np.ndarray) -> np.ndarray:
    """The frames at display-order `indices` as RGB uint8 (F, H, W, 3), decoded on the CPU."""
    import av

    wanted = {int(i): n for n, i in enumerate(indices)}
    out: list[np.ndarray | None] = [None] * len(indices)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame threads, as the seed's decord uses them
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                out[wanted[index]] = frame.to_ndarray(format="rgb24")
            if index >= max(wanted, default=-1):
                break
    if any(f is None for f in out):
        raise ValueError(f"{Path(path).name}: the stream ended before the last planned frame")
    return np.stack(out)


def cpu_clip(frames: np.ndarray, *, height: int, width: int, mean, std):
    """(T, H0, W0, 3) uint8 -> (T, 3, height, width) float32, resized and normalised on the CPU."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def cpu_letterbox(frames: np.ndarray, *, size: int):
    """(D, H0, W0, 3) uint8 -> (D, 3, size, size) float 0..1: the pipeline's letterbox, on the CPU."""
    import torch
    import torch.nn.functional as F

    from vqf.video.geometry import LETTERBOX_FILL, Letterbox

    box = Letterbox.fit(width=frames.shape[2], height=frames.shape[1], size=size)
    new_w, new_h = box.resized
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    out = torch.full((len(frames), 3, size, size), LETTERBOX_FILL / 255)
    out[:, :, :new_h, :new_w] = x
    return out


def score_video(path: Path, *, recipe: Recipe, models: SeedModels, device: str) -> None:
    """Runs every filter on one video the seed's way; raises on a bad video."""
    import torch

    from vqf.filters import dense_fps
    from vqf.video.plan import make_plan
    from vqf.video.probe import probe

    s = recipe.sampling
    info = probe(path, decode=recipe.decode, sampling=s, device="cpu")
    plan = make_plan(
        info.timestamps, sampling=s, duration_s=info.duration_s, dense_fps=dense_fps(recipe)
    )
    for f, bank in models.filters:
        if "detect" in f.reads:
            frames = decode_frames(path, plan.detect_frames)  # this filter's own decode
            bank.detector(f.model_name).detect(cpu_letterbox(frames, size=s.detect_size).to(device))
            continue
        frames = decode_frames(path, plan.frames)  # this filter's own decode
        backbone = bank.backbone(f.model_name)
        for kind in f.reads:  # the whole clip, the windows, the reversed windows: one call each
            clips = [
                cpu_clip(frames[c.take], height=s.height, width=s.width, mean=s.mean, std=s.std)
                for c in plan.clips
                if c.kind == kind
            ]
            if clips:
                pixels = torch.stack(clips).to(device)  # the host-to-device copy the seed pays
                f.probs(backbone.encode(pixels)).float().cpu()


def run_baseline(
    recipe: Recipe,
    *,
    rows: list,
    device: str,
    workers: int | None = None,
    on_video: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Fetches and scores `rows` (InputRow) the seed's way; returns videos/s (loading not
    counted). `on_video`, when given, gets the summary so far after each video, so a caller
    cut off at a time limit still has the videos that finished."""
    from vqf.storage import Fetcher

    workers = max(1, workers or recipe.decode.workers)
    fetcher = Fetcher(recipe.storage)
    pool: queue.Queue[SeedModels] = queue.Queue()
    for _ in range(workers):
        pool.put(SeedModels(recipe, device=device))
    lock = threading.Lock()
    finished: list[float] = []  # seconds from the start at which each video ended
    succeeded = 0
    started = time.perf_counter()

    def summary(seconds: float, *, done: int) -> dict[str, Any]:
        return {
            "design": DESIGN,
            "videos": len(rows),
            "done": done,
            "succeeded": succeeded,
            "workers": workers,
            "seconds": seconds,
            "videos_per_s": succeeded / seconds if seconds > 0 else 0.0,
            "finished_s": list(finished),
        }

    def one(row) -> bool:
        nonlocal succeeded
        models = pool.get()
        ok = False
        try:
            with fetcher.fetch(row) as fetched:
                score_video(fetched.path, recipe=recipe, models=models, device=device)
            ok = True
        except Exception as e:  # a bad video costs the baseline its result, like the seed
            log.info("baseline: %s failed: %s", row.video_id, e)
        finally:
            pool.put(models)
        with lock:
            finished.append(time.perf_counter() - started)
            succeeded += ok
            partial = summary(finished[-1], done=len(finished))
            if on_video is not None:  # under the lock: saves arrive in order
                on_video(partial)
        return ok

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seed-worker") as ex:
        list(ex.map(one, rows))
    return summary(time.perf_counter() - started, done=len(rows))
