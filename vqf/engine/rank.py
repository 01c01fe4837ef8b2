"""One rank: its slice of the table through a streaming dataflow of stages.

```
rows ─► prepare ─► detect ─► decode lanes ─► models ─► record ─► writer
        (fetch,    (seek to   (N pipelines,   (batches   (one row   (groups of
        probe,     detection  chunks, clips   of clips   per input) rows, durable)
        plan)      frames;    as frames       across
                   batched)   arrive)         videos)
```
Every stage runs on the stage runtime (vqf/engine/runtime.py), which owns its threads, CUDA
device and stream, deadline, end marker and shutdown; stages see a narrow `Context`, never
the rank. Every arrow is a bounded queue, and decoded frames in flight stay under a byte
budget, so memory does not grow with video length and decode runs while the models work on
earlier clips. Failures from any stage reach the recorder as data; the recorder owes every
input row exactly one output row.

A stop (`request_stop`: SIGTERM, a first Ctrl-C, too many stuck threads) takes no new video
and gives those in flight engine.grace_s to finish; finished rows are written, the rest are
journalled as interrupted (charged nothing) and left for the rerun.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from vqf.config import Recipe
from vqf.decide import rules_of
from vqf.engine.context import Context
from vqf.engine.flow import END, Budget, put
from vqf.engine.job import VideoJob
from vqf.engine.memory import fix_heap_thresholds
from vqf.engine.recorder import Recorder
from vqf.engine.runtime import Runtime
from vqf.engine.stats import RankStats
from vqf.engine.writer import Writer
from vqf.errors import OutputFailed, Stopped, StuckThreads
from vqf.schema import DeviceInfo

log = logging.getLogger(__name__)
GB = 1024**3
SIGNAL_EXIT = {"SIGTERM": 143, "SIGINT": 130}


class Rank:
    """Owns one device: the stages, the models, the recorder and the writer."""

    def __init__(self, recipe: Recipe, *, rank: int, world_size: int, device: str, stats=None):
        self.recipe = recipe
        self.rank = rank
        self.world_size = world_size
        self.device = device
        fix_heap_thresholds()  # RSS must not creep up with the hours of work a rank does
        self.stats = stats or RankStats(rank=rank, world_size=world_size, device=device)
        self.device_info = describe_device(device, rank=rank, world_size=world_size)
        self.pool = "device" if device.startswith("cuda") else "host"
        d = recipe.decode
        self.budget = Budget(
            host_bytes=d.memory_budget_gb * GB, device_bytes=d.device_memory_budget_gb * GB
        )
        self.keep_prepared: list | None = None  # (row, Prepared) of each video, when a list
        self.stop_reason: str | None = None  # why a stop was asked for ("SIGTERM", ...)
        self._stop_at = 0.0
        self._stopping = threading.Event()
        self.journal = None
        self.fetcher = None
        self.abandoned = 0  # stage workers given up on past a deadline, in every stream

    # -- stopping ---------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Takes no new video from now on; those in flight get engine.grace_s. Safe from a
        signal handler."""
        if self.stop_reason is None:
            self.stop_reason, self._stop_at = reason, time.monotonic()
            log.warning(
                "%s: stopping; videos in flight get %gs to finish (a second Ctrl-C exits now)",
                reason, self.recipe.engine.grace_s,
            )  # fmt: skip
        self._stopping.set()

    def exit_now(self, code: int) -> None:
        """Leaves at once (a second Ctrl-C); videos in flight are charged nothing."""
        import os
        import sys

        if self.journal is not None:
            self.journal.interrupt(self.journal.in_flight())
        print("vqf: stopped at once; rerun the same command to resume", file=sys.stderr)
        sys.stderr.flush()
        os._exit(code)

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
        writing = Runtime(device="cpu", fail=lambda job, error: None, stats=self.stats)
        writer = Writer(
            sink,
            flush_rows=self.recipe.engine.writer_flush_rows,
            flush_s=self.recipe.engine.writer_flush_s,
            stats=self.stats,
            on_written=journal.leave_many,
        )
        writing.start(writer)
        self.stats.queues["write"] = writer.queue
        self.recorder = Recorder(
            writer, recipe=self.recipe, device=self.device_info, stats=self.stats,
            device_name=self.device, journal=journal,
        )  # fmt: skip
        self.recorder.owe(work)
        self.ctx = Context(
            self.recipe, device=self.device, stats=self.stats, budget=self.budget,
            recorder=self.recorder, journal=journal,
        )  # fmt: skip
        self.ctx.stopping = self._stopping
        self.ctx.keep_prepared = self.keep_prepared
        self._writing = writing
        stuck = finished = False
        try:
            todo, suspects = self._sort_out(work, journal)
            if group is not None or todo or suspects:  # every rank reaches the checkpoints
                self._build(group=group, local_leader=local_leader)
            for item in suspects:  # each alone: a crash counts against its own video only
                if self._stopping.is_set():
                    break
                self._stream([item], alone=True)
                writer.sync()  # its row is durable before the next suspect starts
            if todo and not self._stopping.is_set():
                self._stream(todo)
            finished = True
        except StuckThreads:
            stuck = True
        finally:
            if self.ctx.exports is not None:
                self.ctx.exports.close()
            left = self._settle(journal, finished=finished)
            writer.drain(writing)
        failed = writing.error
        try:
            sink.close()
        except Exception as e:  # the output is already failing: say it once, below
            failed = failed or e
        clean = failed is None and not left and self.stop_reason is None and not stuck
        try:
            journal.close(clean=clean)
        except OSError as e:  # a full disk: the output error below says what matters
            log.warning("journal %s: %s", journal.path, e)
        written = self.stats.counters["rows_written"]
        if failed is not None:
            raise OutputFailed(
                f"output error: {_one_line(failed)}; {written:g} rows written, "
                f"rerun the same command to resume"
            ) from None
        if stuck:
            raise StuckThreads(
                f"{self.stuck_threads()} threads stuck past their deadlines; every finished row "
                f"is written ({written:g}), the rest ({len(left)}) are left for the restart"
            )
        if self.stop_reason is not None:
            raise Stopped(
                f"stopped by {self.stop_reason}: {written:g} rows written, {len(left)} left; "
                f"rerun the same command to resume",
                exit_code=SIGNAL_EXIT.get(self.stop_reason, 1),
            )
        self._check_budget()
        snap = self.stats.snapshot()
        snap["storage"] = self.fetcher.stats() if self.fetcher is not None else {}
        return snap

    def _settle(self, journal, *, finished: bool) -> list:
        """After the streams: rows still owed. A stop, a failing output or an error of the
        rank itself leaves them for the rerun, journalled as interrupted (charged nothing);
        a run that finished gives each an INTERNAL failure."""
        if not finished or self._stopping.is_set() or self._writing.aborted.is_set():
            left = self.recorder.forgive_all()
            try:
                journal.interrupt(journal.in_flight())
            except OSError as e:  # a full disk: they may be charged one attempt
                log.warning("journal %s: %s", journal.path, e)
            return left
        self.recorder.close()
        return []

    def _check_budget(self) -> None:
        """Every clip buffer gave its bytes back: the budget is at zero after a clean run."""
        for pool in ("host", "device"):
            if self.budget.used[pool] or self.budget.queued[pool]:
                log.error(
                    "budget leak: %d bytes of %s frames still held (%d queued) after the run",
                    self.budget.used[pool], pool, self.budget.queued[pool],
                )  # fmt: skip
                self.stats.add("budget_leak_bytes", self.budget.used[pool])

    def stuck_threads(self) -> int:
        """Threads given up on past a deadline (they may still hold a core or a file)."""
        c = self.stats.counters
        stuck = self.abandoned + c["write_timeouts"]
        return int(stuck + (self.fetcher.stuck() if self.fetcher is not None else 0))

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
        """prepare ─► detect ─► decode ─► models on the stage runtime, until all drain, the
        grace after a stop runs out, or the output fails."""
        from vqf.engine.decode_stage import DecodeStage
        from vqf.engine.detect_stage import DetectStage
        from vqf.engine.models_stage import ModelStage
        from vqf.engine.prepare import PrepareStage

        ctx, d = self.ctx, self.recipe.decode
        depth = 4 * max(self.batch_sizes.values(), default=8)
        models = ModelStage(
            ctx, filters=self.learned, bank=self.bank, batch_sizes=self.batch_sizes, depth=depth
        )
        ctx.aggregate = models.aggregate
        self.models = models  # what the profiler reads: the backbones and the filters on them
        to_prepare: queue.Queue = queue.Queue(maxsize=max(1, d.workers))
        to_decode: queue.Queue = queue.Queue(maxsize=max(1, d.prefetch))
        stages: list = []
        if self.detectors:
            to_detect: queue.Queue = queue.Queue(maxsize=max(1, d.prefetch))
            stages.append(PrepareStage(ctx, fetcher=self.fetcher, inbox=to_prepare,
                                       outbox=to_detect))  # fmt: skip
            stages.append(
                DetectStage(ctx, detectors=self.detectors, inbox=to_detect, outbox=to_decode)
            )
            self.stats.queues["detect"] = to_detect
        else:
            stages.append(PrepareStage(ctx, fetcher=self.fetcher, inbox=to_prepare,
                                       outbox=to_decode))  # fmt: skip
        lanes = 1 if alone else self.lanes
        decode = DecodeStage(ctx, inbox=to_decode, outbox=models.inbox, models=models,
                             lanes=lanes)  # fmt: skip
        stages += [decode, models]
        self.stats.queues["prepare"] = to_prepare
        self.stats.queues["decode"] = to_decode
        self.stats.queues["clips"] = models.inbox
        self.stats.probes["frames_in_flight"] = self.budget.snapshot
        runtime = Runtime(device=self.device, fail=ctx.fail, stats=self.stats)
        for stage in reversed(stages):  # consumers first: nothing waits on a stage not started
            runtime.start(stage)
        feeder = threading.Thread(
            target=self._feed, args=(todo, to_prepare, runtime), name="vqf-feed", daemon=True
        )
        feeder.start()
        try:
            runtime.wait(models, tick=lambda: self._check_stops(runtime))
        finally:
            runtime.abort()  # whatever is left (a stop's grace ran out) stops looking up
            self.abandoned += runtime.abandoned
            self.stats.add("decode_lanes_replaced", runtime.replaced(decode))
        if self.stop_reason == "stuck threads":
            raise StuckThreads("stuck threads")

    def _feed(self, todo: list, inbox: queue.Queue, runtime: Runtime) -> None:
        """The stream's rows into the prepare stage, until a stop; then END."""
        going = lambda: not self._stopping.is_set() and not runtime.aborted.is_set()  # noqa: E731
        for n, item in enumerate(todo):
            if not going() or not put(inbox, VideoJob(item=item), alive=going):
                self.recorder.forgive(todo[n:])  # never started: the rerun's
                break
        put(inbox, END, alive=lambda: not runtime.aborted.is_set())

    def _check_stops(self, runtime: Runtime) -> None:
        """From the rank's main loop: the grace after a stop, stuck threads, a failed output."""
        if self._writing.aborted.is_set():
            runtime.abort()
            return
        limit = self.recipe.engine.max_stuck_threads
        if self.stop_reason is None and self.abandoned + runtime.abandoned > limit:
            log.error(
                "%d threads are stuck past their deadlines (engine.max_stuck_threads = %d): "
                "taking no new videos, finishing those in flight",
                self.abandoned + runtime.abandoned, limit,
            )  # fmt: skip
            self.request_stop("stuck threads")
        if self.stop_reason is not None:
            if time.monotonic() - self._stop_at > self.recipe.engine.grace_s:
                log.warning("the grace of %gs is over: leaving the videos still in flight "
                            "for the rerun", self.recipe.engine.grace_s)  # fmt: skip
                runtime.abort()

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
        frame_filters = [f for f in filters if "frames" in f.reads]
        self.ctx.frame_filters = frame_filters
        learned = [f for f in filters if f not in self.detectors and f not in frame_filters]
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

    def _build_exports(self) -> None:
        spec = self.recipe.filters.get("abnormal_region")
        if spec is None or not spec.enable or not spec.export.enable:
            return
        from vqf.video.export import ExportPool

        self.ctx.exports = ExportPool(spec.export, storage=self.recipe.storage, stats=self.stats)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


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
