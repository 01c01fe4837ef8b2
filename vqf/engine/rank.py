"""One rank: its slice of the table through a streaming dataflow of stages.

```
rows ─► prepare ─► detect ─► decode lanes ─► assemble ─► models ─► aggregate ─► record ─► writer
        (fetch,    (seek to   (N pipelines,  (clips as   (batches   (per video)  (one row
        probe,     detection  chunks of      frames      of clips                per input)
        plan)      frames;    chunk_frames;  arrive)     across
                   batched)   frame filters)             videos)
```
Each stage runs on its own thread(s); every arrow is a bounded queue, and decoded frames in
flight stay under a byte budget, so memory does not grow with video length and decode runs
while the models work on earlier clips. Failures from any stage reach the recorder as data;
the recorder owes every input row exactly one output row.
"""

from __future__ import annotations

import logging
import queue
from typing import Any

from vqf.config import Recipe
from vqf.decide import rules_of
from vqf.engine.flow import Budget
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.memory import fix_mmap_threshold
from vqf.engine.recorder import Recorder
from vqf.engine.stats import RankStats
from vqf.engine.writer import Writer
from vqf.errors import Stage, StuckThreads, VideoError
from vqf.schema import DeviceInfo

log = logging.getLogger(__name__)
GB = 1024**3


class Rank:
    """Owns one device: the stages, the models, the recorder and a writer thread."""

    def __init__(self, recipe: Recipe, *, rank: int, world_size: int, device: str, stats=None):
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.device = device
        fix_mmap_threshold()  # RSS must not creep up with the hours of work a rank does
        self.stats = stats or RankStats(rank=rank, world_size=world_size, device=device)
        self.device_info = describe_device(device, rank=rank, world_size=world_size)
        self.pool = "device" if device.startswith("cuda") else "host"
        d = recipe.decode
        self.budget = Budget(
            host_bytes=d.memory_budget_gb * GB, device_bytes=d.device_memory_budget_gb * GB
        )
        self.exports = None
        self.keep_prepared: list | None = None  # (row, Prepared) of each video, when a list

    # -- the run -----------------------------------------------------------------------------
    def run(self, *, group=None, local_leader: bool = True) -> dict[str, Any]:
        """Processes the slice; returns the rank's final snapshot."""
        from vqf.engine.journal import Journal, journal_path
        from vqf.engine.tables import open_tables

        sink, work = open_tables(
            self.recipe, rank=self.rank, world_size=self.world_size, stats=self.stats, group=group
        )
        journal = Journal(
            journal_path(self.recipe, self.rank), max_attempts=self.recipe.engine.max_attempts
        )
        self.journal = journal
        writer = Writer(
            sink,
            flush_rows=self.recipe.engine.writer_flush_rows,
            stats=self.stats,
            on_written=journal.leave_many,
        )
        self.stats.queues["write"] = writer.queue
        self.recorder = Recorder(
            writer, recipe=self.recipe, device=self.device_info, stats=self.stats,
            device_name=self.device, journal=journal,
        )  # fmt: skip
        self.recorder.owe(work)
        clean, stuck = False, None
        try:
            todo, suspects = self._sort_out(work, journal)
            if group is not None or todo or suspects:  # every rank reaches the checkpoints
                self._build(group=group, local_leader=local_leader)
            for item in suspects:  # each alone: a crash counts against its own video only
                self._stream([item], alone=True)
            if todo:
                self._stream(todo)
            clean = True
        except StuckThreads as e:  # what finished is written and committed; then exit
            stuck = e
        finally:
            if self.exports is not None:
                self.exports.close()
            if clean:
                self.recorder.close()
            writer.drain()
        sink.close()
        journal.close(clean=clean)
        if stuck is not None:
            raise stuck
        snap = self.stats.snapshot()
        snap["storage"] = self.fetcher.stats() if hasattr(self, "fetcher") else {}
        return snap

    def stuck_threads(self) -> int:
        """Threads given up on past a deadline (they may still hold a core or a file)."""
        c = self.stats.counters
        stuck = c["probe_timeouts"] + c["decode_timeouts"] + c["model_timeouts"]
        return int(stuck + c["write_timeouts"] + self.fetcher.stuck())

    def _sort_out(self, work: list, journal) -> tuple[list, list]:
        """(rows to judge, rows a crash interrupted before); bad rows and videos that killed
        the process engine.max_attempts times get their failure rows here."""
        from vqf.engine.journal import crash_error, row_key

        todo, suspects = [], []
        crashed = journal.crashed()
        for item in work:
            if item.error is not None:
                self.recorder.fail(item, item.error)
                continue
            key = row_key(index=item.index, video_id=item.video_id)
            if journal.quarantined(key) is not None:
                self.stats.add("crash_quarantined")
                error = crash_error(crashed[key], max_attempts=journal.max_attempts)
                self.recorder.fail(item, error)
            elif key in crashed:
                self.stats.add("crash_retried")
                suspects.append(item)
            else:
                todo.append(item)
        return todo, suspects

    def _stream(self, todo: list, *, alone: bool = False) -> None:
        """prepare ─► detect ─► decode ─► models, each on its own threads, until all drain."""
        from vqf.engine.decode_stage import DecodeStage
        from vqf.engine.detect_stage import DetectStage
        from vqf.engine.prepare import PrepareStage

        d = self.recipe.decode
        self.models = self._model_stage()
        to_decode: queue.Queue = queue.Queue(maxsize=max(1, d.prefetch))
        stages: list = []
        if self.detectors:
            to_detect: queue.Queue = queue.Queue(maxsize=max(1, d.prefetch))
            stages.append(PrepareStage(self, items=todo, outbox=to_detect))
            stages.append(
                DetectStage(self, detectors=self.detectors, inbox=to_detect, outbox=to_decode)
            )
            self.stats.queues["detect"] = to_detect
        else:
            stages.append(PrepareStage(self, items=todo, outbox=to_decode))
        decode = DecodeStage(self, inbox=to_decode, lanes=1 if alone else self.lanes)
        self.stats.queues["decode"] = to_decode
        self.stats.queues["clips"] = self.models.inbox
        self.stats.probes["frames_in_flight"] = self.budget.snapshot
        for stage in (*stages, decode, self.models):
            stage.start()
        prepare = stages[0]
        while not self.models.finished.wait(0.5):
            decode.watch(timeout_s=d.timeout_s)
            self.models.watch(timeout_s=d.timeout_s)
            if self.stuck_threads() > self.recipe.engine.max_stuck_threads and not prepare.stopped:
                log.error(
                    "%d threads are stuck past their deadlines (engine.max_stuck_threads = %d): "
                    "taking no new videos, finishing those in flight",
                    self.stuck_threads(), self.recipe.engine.max_stuck_threads,
                )  # fmt: skip
                self.recorder.forgive(prepare.stop())  # rows never started: the restart's
        self.stats.add("decode_lanes_replaced", decode.replaced)
        if prepare.stopped:
            raise StuckThreads(
                f"{self.stuck_threads()} threads stuck past their deadlines; every finished row "
                f"is written, the rest are left for the restart"
            )

    # -- set-up ------------------------------------------------------------------------------
    def _build(self, *, group=None, local_leader: bool = True) -> None:
        from vqf.engine.checkpoints import localize
        from vqf.filters import build_filters, model_needs
        from vqf.models.bank import ModelBank
        from vqf.storage import Fetcher

        self.fetcher = Fetcher(self.recipe.storage)
        self.stats.probes["storage"] = self.fetcher.stats
        if self.device.startswith("cuda"):
            import torch

            from vqf.ops.dashboard import gpu_reading

            torch.cuda.set_device(torch.device(self.device))
            self.stats.probes["gpu"] = lambda: gpu_reading(self.device)
        self.probe_plane = self.new_plane()
        resolve = localize(
            self.recipe, fetcher=self.fetcher, local_leader=local_leader, group=group
        )
        needs = model_needs(self.recipe)  # the filters say what to load; the bank loads it
        self.bank = ModelBank.load(
            recipe=self.recipe, needs=needs, device=self.device, resolve=resolve
        )
        s = self.recipe.sampling
        self.bank.warm_up(
            frames=s.whole_frames, height=s.height, width=s.width, detect_size=s.detect_size
        )
        filters = list(build_filters(recipe=self.recipe, bank=self.bank).values())
        self.detectors = [f for f in filters if "detect" in f.reads]
        self.frame_filters = [f for f in filters if "frames" in f.reads]
        learned = [f for f in filters if f not in self.detectors and f not in self.frame_filters]
        cap = self.recipe.engine.clip_batch
        self.batch_sizes = {
            name: max(1, min(cap, m.batch_size)) for name, m in self.recipe.models.items()
        }
        self.learned = learned
        self.lanes = self.recipe.decode.pipelines or (8 if self.pool == "device" else 2)
        rules_of(self.recipe)  # a malformed threshold fails here, before any video
        random = set(self.bank.random_models) | set(getattr(self.bank, "random_heads", ()))
        if random:
            self.recorder.extra["random_init"] = sorted(random)
            log.warning(
                "models initialised at random (scores are meaningless): %s",
                ", ".join(sorted(random)),
            )
        self._build_exports()

    def _model_stage(self):
        from vqf.engine.models_stage import ModelStage

        depth = 4 * max(self.batch_sizes.values(), default=8)
        return ModelStage(
            self, filters=self.learned, bank=self.bank, batch_sizes=self.batch_sizes, depth=depth
        )

    def _build_exports(self) -> None:
        spec = self.recipe.filters.get("abnormal_region")
        if spec is None or not spec.enable or not spec.export.enable:
            return
        from vqf.video.export import ExportPool

        self.exports = ExportPool(spec.export, storage=self.recipe.storage, stats=self.stats)

    # -- what the stages call ----------------------------------------------------------------
    def entering(self, jobs, stage: str) -> None:
        """Journals that `jobs` enter `stage` (a crash now counts against them), then runs the
        fault hook (VQF_FAULT) for each; an injected fault raises here."""
        from vqf.faults import fault_point

        jobs = list(jobs)
        self.journal.enter_many([(j.video_id, j.key) for j in jobs], stage)
        for job in jobs:
            fault_point(stage, job.video_id)

    def new_plane(self):
        """A video plane of one's own (a stage thread's DALI pipelines); its plans carry the
        dense grid only when an enabled filter reads it."""
        from vqf.filters import dense_fps
        from vqf.video import VideoPlane

        return VideoPlane(recipe=self.recipe, device=self.device, dense_fps=dense_fps(self.recipe))

    def frame_measures(self, prepared):
        from vqf.filters.frames import FrameMeasures

        return FrameMeasures(
            self.frame_filters,
            plan=prepared.plan,
            info=prepared.info,
            sampling=self.recipe.sampling,
        )

    def fail(self, job: VideoJob, error: VideoError) -> None:
        """A stage's failure of one video: its row, once; the other stages drop the video."""
        with job.lock:
            if job.closed:
                return
            job.closed = True
        job.release()
        self.recorder.fail(job.item, error, job=job)

    def start_export(self, job: VideoJob) -> None:
        """Queues the cropped copy when a safe crop was applied (before the file is released)."""
        crop = job.detect_info.get("abnormal_region_crop")
        if self.exports is None or job.roi is None or not crop or job.fetched is None:
            return
        roi, info = job.roi, job.prepared.info
        width, height = info.display_width, info.display_height
        box = (
            round(roi.x0 * width), round(roi.y0 * height),
            round(roi.x1 * width), round(roi.y1 * height),
        )  # fmt: skip
        job.export = self.exports.submit(
            job.fetched.path, video_id=job.video_id, crop=box, rotation=info.rotation
        )

    def maybe_finish(self, job: VideoJob) -> None:
        """Records a video once decode is over and every clip has been through the models."""
        with job.lock:
            if job.closed or not job.decoded or job.clips_out:
                return
            job.closed = True
        try:
            info = self.models.aggregate(job)
            info.update(job.frame_info)
            info.update(job.detect_info)
        except Exception as e:
            self.recorder.fail(job.item, as_video_error(e, Stage.AGGREGATE), job=job)
            return
        extra = {
            "frames_decoded": job.frames_decoded,
            "frames_planned": len(job.prepared.plan.frames),
        }
        if job.export is None:
            self.recorder.succeed(job, info, route=job.prepared.route, extra=extra)
            return
        # the row waits for its export on the export pool's thread, never on a stage's
        job.export.add_done_callback(
            lambda fut: self._record_export(job, info, extra, fut.result())
        )

    def _record_export(self, job: VideoJob, info: dict, extra: dict, result: dict) -> None:
        if "error" in result:
            info["abnormal_region_export"] = {"error": result["error"]}
        else:
            info["abnormal_region_export"] = {
                k: result[k] for k in ("url", "width", "height", "frames") if k in result
            }
            extra = dict(extra, video_oss_url=result["url"])
        self.recorder.succeed(job, info, route=job.prepared.route, extra=extra)


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
