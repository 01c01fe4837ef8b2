"""One rank: its slice of the table through fetch+probe+plan, the DALI graph, the models, the sink.

```
work ──► prepare pool (fetch, probe, plan) ──► [detect] ──► decode batch ──► model stage ──► writer
           failures go straight to the writer as failure rows
```
Every input row of the slice that the output does not hold yet ends as exactly one record.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from vqf.config import Recipe
from vqf.decide import decide, rules_of
from vqf.engine.stats import RankStats
from vqf.engine.work import WorkItem, select_work
from vqf.engine.workers import Task as _Task
from vqf.engine.workers import Workers as _Workers
from vqf.engine.workers import call_with_deadline
from vqf.engine.writer import Writer
from vqf.errors import ErrorType, Stage, VideoError
from vqf.schema import DeviceInfo, failure_record, now, success_record

log = logging.getLogger(__name__)


@dataclass
class _Ready:
    item: WorkItem
    fetched: Any
    prepared: Any
    started: float
    start_time: str
    roi: Any = None
    detect_info: dict = field(default_factory=dict)


class Rank:
    """Owns one device, one video plane, the models and a writer thread."""

    def __init__(self, recipe: Recipe, *, rank: int, world_size: int, device: str, stats=None):
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.stats = stats or RankStats(rank=rank, world_size=world_size, device=device)
        self.device_info = describe_device(device, rank=rank, world_size=world_size)

    # -- set-up ------------------------------------------------------------------------------
    def _open_tables(self, group=None):
        """This rank's slice and sink. With several ranks, ODPS sessions are made by rank 0
        and joined by the others (one download and one upload session per job)."""
        from vqf.tables import open_sink, open_source, shard_range

        def opened(kind: str, open_fn):
            if group is None:
                return open_fn(None)
            holder = {}
            if self.rank == 0:
                holder["t"] = open_fn(None)
            sid = group.share(kind, lambda: getattr(holder["t"], "session_id", "") or "")
            return holder["t"] if self.rank == 0 else open_fn(sid or None)

        uri_in, uri_out = self.recipe.tables, self.recipe.outputs
        source = opened("source", lambda sid: open_source(uri_in, session_id=sid))
        total = source.count()
        if self.recipe.engine.max_rows:
            total = min(total, self.recipe.engine.max_rows)
        start, count = shard_range(total, rank=self.rank, world_size=self.world_size)
        sink = opened(
            "sink",
            lambda sid: open_sink(
                uri_out, rank=self.rank, world_size=self.world_size, session_id=sid
            ),
        )
        work = select_work(
            source.read(start=start, count=count), start=start, done=sink.done_counts()
        )
        self.stats.total = count
        self.stats.add("rows_skipped_done", count - len(work))
        return sink, work

    def _build_stages(self, *, group=None, local_leader: bool = True):
        from vqf.engine.models_stage import ModelStage
        from vqf.filters import build_filters
        from vqf.models.bank import ModelBank
        from vqf.storage import Fetcher
        from vqf.video import VideoPlane

        self.fetcher = Fetcher(self.recipe.storage)
        self.stats.probes["storage"] = self.fetcher.stats
        if self.device.startswith("cuda"):
            from vqf.ops.dashboard import gpu_reading

            self.stats.probes["gpu"] = lambda: gpu_reading(self.device)
        self.plane = VideoPlane(recipe=self.recipe, device=self.device)
        resolve = self._fetch_checkpoints(local_leader=local_leader, group=group)
        self.bank = ModelBank.load(recipe=self.recipe, device=self.device, resolve=resolve)
        filters = list(build_filters(recipe=self.recipe, bank=self.bank).values())
        self.detectors = [f for f in filters if "detect" in f.reads]
        self.frame_filters = [
            f for f in filters if getattr(f, "model_name", "") == "" and f not in self.detectors
        ]
        learned = [f for f in filters if f not in self.detectors and f not in self.frame_filters]
        self.models = ModelStage(
            filters=learned,
            bank=self.bank,
            clip_batch=self.recipe.engine.clip_batch,
            stats=self.stats,
        )
        rules_of(self.recipe)  # a malformed threshold fails here, before any video
        self.extra = {"recipe": self.recipe.name}
        random = set(self.bank.random_models) | set(getattr(self.bank, "random_heads", ()))
        if random:
            self.extra["random_init"] = sorted(random)
            log.warning(
                "models initialised at random (scores are meaningless): %s",
                ", ".join(sorted(random)),
            )

    def _fetch_checkpoints(self, *, local_leader: bool, group):
        """Remote checkpoints: local rank 0 of each node downloads them once, the others wait."""
        import hashlib
        import tempfile
        from pathlib import Path

        root = Path(self.recipe.storage.cache_dir or tempfile.gettempdir()) / "vqf-checkpoints"

        def local(uri: str) -> Path:
            return root / hashlib.sha256(uri.encode()).hexdigest()[:16]

        remote = [
            m.path for m in self.recipe.models.values() if "://" in m.path and m.init != "random"
        ]
        if local_leader:
            for uri in remote:
                if not (local(uri) / ".complete").exists():
                    self.fetcher.fetch_uri(uri, dest=local(uri))
                    (local(uri) / ".complete").touch()
        if group is not None:
            group.barrier()
        return lambda path: local(path) if "://" in path else Path(path)

    # -- the run -----------------------------------------------------------------------------
    def run(self, *, group=None, local_leader: bool = True) -> dict[str, Any]:
        """Processes the slice; returns the rank's final snapshot."""
        sink, work = self._open_tables(group)
        writer = Writer(sink, flush_rows=self.recipe.engine.writer_flush_rows, stats=self.stats)
        self.writer = writer
        self.stats.queues["write"] = writer.queue
        try:
            todo = [w for w in work if w.error is None]
            for item in work:
                if item.error is not None:
                    self._fail(item, item.error)
            if group is not None or todo:  # every rank reaches the checkpoint barrier
                self._build_stages(group=group, local_leader=local_leader)
            if todo:
                self._process(todo)
        finally:
            if hasattr(self, "plane"):
                self.plane.close()
            writer.drain()
        # rank 0 closes last: for ODPS its close commits the blocks every rank wrote
        if group is not None and self.rank == 0:
            group.barrier()
        sink.close()
        if group is not None and self.rank != 0:
            group.barrier()
        snap = self.stats.snapshot()
        snap["storage"] = self.fetcher.stats() if hasattr(self, "fetcher") else {}
        return snap

    def _process(self, todo: list[WorkItem]) -> None:
        cfg = self.recipe.decode
        pending = deque(todo)
        inflight: dict[Future, _Task] = {}
        ready: list[_Ready] = []
        from vqf.engine.stats import Gauge

        self.stats.queues["prepare"] = Gauge(lambda: len(inflight))
        self.stats.queues["decode"] = Gauge(lambda: len(ready))
        workers = _Workers(max(1, cfg.workers))
        while pending or inflight or ready:
            while pending and len(inflight) + len(ready) < cfg.batch_size + cfg.prefetch:
                task = _Task(pending.popleft())
                inflight[workers.submit(self._prepare, task)] = task
            if inflight:
                done, _ = wait(set(inflight), timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    inflight.pop(fut)
                    outcome = fut.result()
                    if isinstance(outcome, _Ready):
                        ready.append(outcome)
                self._abandon_hung(inflight, workers, timeout_s=cfg.timeout_s)
            full = len(ready) >= cfg.batch_size
            # downloads waiting for cache space that ready videos hold: decode what is ready
            starved = self.fetcher.cache_usage().get("waiting", 0) > 0
            if ready and (full or starved or (not pending and not inflight)):
                batch, ready = ready[: cfg.batch_size], ready[cfg.batch_size :]
                self._run_batch(batch)

    def _abandon_hung(self, inflight: dict, workers: _Workers, *, timeout_s: float) -> None:
        """A probe running past decode.timeout_s (a stuck mount, a decoder that never returns)
        becomes a TIMEOUT row; its thread is left behind and its worker slot given back."""
        now_s = time.monotonic()
        for fut, task in list(inflight.items()):
            with task.lock:
                if task.finished or task.probe_started is None:
                    continue
                if now_s - task.probe_started <= timeout_s:
                    continue
                task.abandoned = True
            inflight.pop(fut)
            workers.give_back()
            self.stats.add("probe_timeouts")
            error = VideoError(
                ErrorType.TIMEOUT,
                f"probe of {task.item.video_id} ran past decode.timeout_s = {timeout_s:g}s",
                stage=Stage.PROBE,
                hint="raise decode.timeout_s, or check the storage the video is read from",
            )
            self._fail(task.item, error, started=task.started, start_time=task.start_time)

    def _prepare(self, task: _Task) -> _Ready | None:
        """Fetch, probe and plan one video on a worker thread; a failure is written here.
        Nothing is written for a task the main loop abandoned (it wrote the TIMEOUT row)."""
        item, started, start_time = task.item, task.started, task.start_time
        fetched = None
        try:
            with self.stats.stage("fetch", label=item.video_id):
                fetched = self.fetcher.fetch(item.row)
            task.probe_started = time.monotonic()
            with self.stats.stage("probe", label=item.video_id):
                prepared = self.plane.prepare(fetched.path, uri=fetched.uri)
            with task.lock:
                task.finished = True
                if not task.abandoned:
                    return _Ready(item, fetched, prepared, started, start_time)
            fetched.release()
            return None
        except Exception as e:
            if fetched is not None:
                fetched.release()
            with task.lock:
                task.finished = True
                if task.abandoned:
                    return None
            self._fail(
                item,
                _as_video_error(e, Stage.PROBE if fetched else Stage.FETCH),
                started=started,
                start_time=start_time,
            )
            return None

    def _run_batch(self, batch: list[_Ready]) -> None:
        try:
            if self.detectors:
                batch = self._detect(batch)
            rois = [r.roi for r in batch]
            with self.stats.stage(
                "decode", items=len(batch), label=",".join(r.item.video_id for r in batch)
            ):
                decoded = self._decode_bounded([r.prepared for r in batch], rois)
        except Exception as e:  # the plane isolates bad videos itself; this is the last guard
            decoded = [_as_video_error(e, Stage.DECODE)] * len(batch)
        finally:
            for r in batch:
                r.fetched.release()
        good = [(r, d) for r, d in zip(batch, decoded) if not isinstance(d, BaseException)]
        for r, d in zip(batch, decoded):
            if isinstance(d, BaseException):
                self._fail(
                    r.item,
                    _as_video_error(d, Stage.DECODE),
                    started=r.started,
                    start_time=r.start_time,
                )
        if not good:
            return
        with self.stats.stage(
            "model", items=len(good), label=",".join(r.item.video_id for r, _ in good)
        ):
            infos = self.models.run([d for _, d in good])
        for (r, d), info in zip(good, infos):
            if isinstance(info, VideoError):
                self._fail(r.item, info, started=r.started, start_time=r.start_time)
                continue
            try:
                for f in self.frame_filters:
                    info.update(f.frame_info(d, sampling=self.recipe.sampling))
            except Exception as e:
                self._fail(
                    r.item,
                    _as_video_error(e, Stage.MODEL),
                    started=r.started,
                    start_time=r.start_time,
                )
                continue
            info.update(r.detect_info)
            self._succeed(r, info, route=getattr(d, "route", ""))

    def _bounded(self, fn, *, seconds: float):
        """`fn()` within `seconds`; on a hang the stuck thread keeps the old plane and the rank
        goes on with a fresh one."""
        try:
            return call_with_deadline(fn, seconds=seconds, name="vqf-decode")
        except TimeoutError:
            from vqf.video import VideoPlane

            self.stats.add("decode_timeouts")
            log.error("decode did not finish within %.0f s; rebuilding the video plane", seconds)
            self.plane = VideoPlane(recipe=self.recipe, device=self.device)
            raise TimeoutError(f"decode did not finish within {seconds:.0f} s") from None

    def _decode_bounded(self, prepared: list, rois: list) -> list:
        """The batch through the plane within decode.timeout_s a video; after a timeout each
        video is tried alone, so only the one that hangs gets the TIMEOUT row."""
        limit = self.recipe.decode.timeout_s
        try:
            plane = self.plane
            return self._bounded(
                lambda: plane.decode(prepared, rois=rois), seconds=limit * len(prepared)
            )
        except TimeoutError as e:
            if len(prepared) == 1:
                return [VideoError(ErrorType.TIMEOUT, str(e), stage=Stage.DECODE)]
        out: list = []
        for one, roi in zip(prepared, rois):
            out += self._decode_bounded([one], [roi])
        return out

    def _detect(self, batch: list[_Ready]) -> list[_Ready]:
        kept = []
        for r in batch:
            try:
                with self.stats.stage("detect", label=r.item.video_id):
                    frames = self._bounded(
                        functools.partial(self.plane.detect_frames, r.prepared),
                        seconds=self.recipe.decode.timeout_s,
                    )
                    crops = []
                    for det in self.detectors:
                        result = det.detect(frames.frames, letterbox=frames.letterbox)
                        r.detect_info.update(result.info)
                        if result.crop is not None:
                            crops.append(result.crop)
                    r.roi = merge_crops(crops)
                kept.append(r)
            except Exception as e:
                r.fetched.release()
                self._fail(
                    r.item,
                    _as_video_error(e, Stage.DETECT),
                    started=r.started,
                    start_time=r.start_time,
                )
        return kept

    # -- records -----------------------------------------------------------------------------
    def _succeed(self, r: _Ready, info: dict, *, route: str) -> None:
        # scores are always written; the recipe's thresholds add keep/reasons beside them
        extra = dict(self.extra, decode_route=route, **decide(info, recipe=self.recipe))
        record = success_record(
            r.item.row,
            info,
            start_time=r.start_time,
            end_time=now(),
            cost_s=time.time() - r.started,
            device=self.device_info,
            extra=extra,
        )
        if route and route != "nvdec" and self.device.startswith("cuda"):
            self.stats.add("fallback_cpu_decode")
        self.stats.add("video_seconds", float(r.prepared.info.duration_s))
        self.writer.put(record)

    def _fail(
        self,
        item: WorkItem,
        error: VideoError,
        *,
        started: float | None = None,
        start_time: str | None = None,
    ) -> None:
        from vqf.storage.secret import redact

        # any stage's message may quote a library's error text: no configured secret leaves
        error = VideoError(error.type, redact(error.message), stage=error.stage, hint=error.hint)
        self.stats.failure(item.video_id, error.type.value, error.message)
        record = failure_record(
            item.raw,
            error,
            row=item.row,
            start_time=start_time,
            cost_s=(time.time() - started) if started else 0.0,
            device=self.device_info,
            extra=getattr(self, "extra", {"recipe": self.recipe.name}),
        )
        self.writer.put(record)


def merge_crops(crops: list[tuple[float, float, float, float]]):
    """The region every detection filter agrees is safe: the intersection of their crops."""
    if not crops:
        return None
    from vqf.video import Roi

    x0, y0 = max(c[0] for c in crops), max(c[1] for c in crops)
    x1, y1 = min(c[2] for c in crops), min(c[3] for c in crops)
    if x1 - x0 < 0.05 or y1 - y0 < 0.05:  # the crops disagree: keep the whole frame
        return None
    return Roi(x0=x0, y0=y0, x1=x1, y1=y1)


def _as_video_error(e: BaseException, stage: Stage) -> VideoError:
    if isinstance(e, VideoError):
        return e
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return VideoError(ErrorType.OUT_OF_MEMORY, str(e)[:500], stage=stage)
    if isinstance(e, TimeoutError):
        return VideoError(ErrorType.TIMEOUT, str(e) or "timed out", stage=stage)
    kind = ErrorType.DECODE_FAILED if stage == Stage.DECODE else ErrorType.INTERNAL
    if stage in (Stage.MODEL, Stage.DETECT):
        kind = ErrorType.MODEL_FAILED
    return VideoError(kind, f"{type(e).__name__}: {e}"[:1000], stage=stage)


def describe_device(device: str, *, rank: int, world_size: int) -> DeviceInfo:
    """The result_info's device_name and device_info."""
    import platform
    import socket

    import torch

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "rank": rank,
        "world_size": world_size,
        "device": device,
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info["memory_gb"] = round(props.total_memory / 1024**3, 1)
        info["capability"] = f"{props.major}.{props.minor}"
        return DeviceInfo(name=props.name, info=info)
    return DeviceInfo(name=f"cpu ({platform.machine()})", info=info)
