"""The prepare stage: fetch, probe and plan on a pool of worker threads.

A feeder thread keeps `decode.workers` rows in the pool and the next stage's inbox topped up
(`decode.prefetch` probed videos waiting), so downloads and probes run ahead of decode. A
probe running past decode.timeout_s (a stuck mount, a demuxer that never returns) becomes a
TIMEOUT row; its thread is abandoned and its slot given back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait

from vqf.engine.flow import END
from vqf.engine.job import VideoJob, as_video_error
from vqf.engine.stats import Gauge
from vqf.engine.workers import Task, Workers
from vqf.errors import ErrorType, Stage, VideoError


class PrepareStage:
    """Rows in, prepared VideoJobs out (`outbox`), END at the end."""

    def __init__(self, engine, *, items: list, outbox: queue.Queue):
        self.engine = engine
        self.pending = deque(items)
        self.outbox = outbox
        cfg = engine.recipe.decode
        self.workers = Workers(max(1, cfg.workers))
        self.width = max(1, cfg.workers)
        self.timeout_s = cfg.timeout_s
        self.inflight: dict[Future, Task] = {}
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="vqf-prepare", daemon=True)
        engine.stats.queues["prepare"] = Gauge(lambda: len(self.inflight))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> list:
        """Takes no new rows; returns those never started (their rows are not owed now)."""
        self.stopped = True
        left = []
        while True:
            try:
                left.append(self.pending.popleft())
            except IndexError:
                return left

    def _loop(self) -> None:
        try:
            while self.pending or self.inflight:
                room = self.outbox.maxsize - self.outbox.qsize()
                while self.pending and len(self.inflight) < min(self.width, max(room, 0) + 1):
                    task = Task(self.pending.popleft())
                    task.job = VideoJob(item=task.item)
                    self.inflight[self.workers.submit(self._prepare, task)] = task
                if not self.inflight:
                    time.sleep(0.05)  # the next stage is full: wait for room
                    continue
                done, _ = wait(set(self.inflight), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    self.inflight.pop(fut)
                    job = fut.result()
                    if job is not None:
                        self._hand_on(job)
                self._abandon_hung()
        finally:
            self.outbox.put(END)

    def _hand_on(self, job: VideoJob) -> None:
        while True:
            try:
                self.outbox.put(job, timeout=0.5)
                return
            except queue.Full:
                self._abandon_hung()

    def _abandon_hung(self) -> None:
        now_s = time.monotonic()
        for fut, task in list(self.inflight.items()):
            with task.lock:
                if task.finished or task.probe_started is None:
                    continue
                if now_s - task.probe_started <= self.timeout_s:
                    continue
                task.abandoned = True
            self.inflight.pop(fut)
            self.workers.give_back()
            self.engine.stats.add("probe_timeouts")
            self.engine.fail(
                task.job,
                VideoError(
                    ErrorType.TIMEOUT,
                    f"probe of {task.item.video_id} ran past decode.timeout_s = "
                    f"{self.timeout_s:g}s",
                    stage=Stage.PROBE,
                    hint="raise decode.timeout_s, or check the storage the video is read from",
                ),
            )

    def _prepare(self, task: Task) -> VideoJob | None:
        """Fetch, probe and plan one video on a worker thread; a failure is recorded here.
        Nothing is recorded for a task the feeder abandoned (it recorded the TIMEOUT row)."""
        job, engine = task.job, self.engine
        job.started, job.start_time = task.started, task.start_time
        try:
            engine.journal.enter(job.video_id, job.key, "fetch")  # the fetcher runs its hook
            with engine.stats.stage("fetch", label=job.video_id):
                job.fetched = engine.fetcher.fetch(job.item.row)
            task.probe_started = time.monotonic()
            engine.entering([job], "probe")
            with engine.stats.stage("probe", label=job.video_id):
                job.prepared = engine.probe_plane.prepare(job.fetched.path, uri=job.fetched.uri)
            with task.lock:
                task.finished = True
                if not task.abandoned:
                    if engine.keep_prepared is not None:
                        engine.keep_prepared.append((job.item.row, job.prepared))
                    return job
            job.release()
            return None
        except Exception as e:
            stage = Stage.PROBE if job.fetched is not None else Stage.FETCH
            job.release()
            with task.lock:
                task.finished = True
                if task.abandoned:
                    return None
            engine.fail(job, as_video_error(e, stage))
            return None
