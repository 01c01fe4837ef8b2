"""The stage runtime: every stage's threads, device, deadline, end marker and shutdown.

A stage is a declaration (`Stage`: name, workers, inbox, outbox, deadline, how many items a
worker takes at once) and a work function (`process`). The runtime starts the workers (each
sets the stage's CUDA device and works on a stream of its own), feeds them from the inbox,
turns an exception into failure rows for the videos a worker held, forwards `END` exactly
once when the stage's last worker is done, and counts only *working* time against the
deadline: time a worker spends waiting downstream (a full queue, the byte budget) is marked
with `worker.untimed()` and never makes it "stuck". A worker stuck past the deadline is
abandoned (a thread in C code cannot be stopped): the videos it held get TIMEOUT rows, the
items it carried go to a fresh worker, and a worker abandoned after taking `END` is replaced
by one that finishes the stage, so the end is never lost.

Stages see a narrow `Context` (recorder, budget, stats, device, journal), never the rank.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any

from vqf.engine.flow import END, put
from vqf.errors import ErrorType, VideoError
from vqf.errors import Stage as ErrorStage

log = logging.getLogger(__name__)

__all__ = ["END", "Runtime", "Stage", "Worker", "untimed"]

_here = threading.local()  # the Worker whose thread this is, if any


def untimed():
    """`worker.untimed()` for the worker running this thread (nothing elsewhere): for code
    that waits on someone else but does not know the stage it runs in (recording a row)."""
    worker = getattr(_here, "worker", None)
    return worker.untimed() if worker is not None else nullcontext()


class Stage:
    """What a stage declares; subclasses implement `process` (and maybe `setup`, `finish`).

    `inbox` and `outbox` are bounded queues (`outbox` None for the last stage). A worker takes
    up to `batch` items, waiting `batch_wait_s` for more after the first. `deadline_s` bounds
    working time without progress (None: no deadline). `error_stage` is the stage named in a
    failure row; `timeout_counter` the stats counter a take-over adds to.
    """

    name = "stage"
    error_stage = ErrorStage.DECODE
    timeout_counter = ""
    batch = 1
    batch_wait_s = 0.0
    idle_s: float | None = None  # call `idle(worker)` after this long without an item

    def __init__(self, *, inbox: queue.Queue, outbox: queue.Queue | None, workers: int = 1,
                 deadline_s: float | None = None):  # fmt: skip
        self.inbox, self.outbox = inbox, outbox
        self.workers = max(1, int(workers))
        self.deadline_s = deadline_s

    # -- what a stage says ------------------------------------------------------------------
    def setup(self, worker: Worker) -> None:
        """Per-worker state (a video plane of its own, say); runs before the worker starts."""

    def process(self, worker: Worker, items: list) -> None:
        """Works on items taken from the inbox; hands results on with `worker.emit`."""
        raise NotImplementedError

    def finish(self, worker: Worker) -> None:
        """After the inbox's END, once, by the stage's last worker (flush what is pending)."""

    def idle(self, worker: Worker) -> None:
        """Nothing arrived for `idle_s` seconds."""

    def taken_over(self, worker: Worker) -> None:
        """`worker` was abandoned past the deadline (its videos already have TIMEOUT rows):
        settle what it owned, so the fresh worker starts clean."""

    def ends_batch(self, item: Any) -> bool:
        """True for an item after which the worker takes no more into this batch."""
        return False

    def jobs_of(self, item: Any) -> list:
        """The videos an inbox item belongs to (their rows are failed if it breaks)."""
        return [item]

    def timeout_error(self, job: Any, seconds: float) -> VideoError:
        return VideoError(
            ErrorType.TIMEOUT,
            f"{self.name} of {job.video_id} made no progress for {seconds:g}s (decode.timeout_s)",
            stage=self.error_stage,
            hint="raise decode.timeout_s, or check the video, the decoder and the device",
        )


class Worker:
    """One thread of a stage. `held` are the videos it works on now (a take-over fails them);
    `carried` are items it took but has not started (a take-over hands them on)."""

    def __init__(self, runtime: Runtime, stage: Stage, number: int, *, finishing: bool = False):
        self.runtime, self.stage = runtime, stage
        self.name = f"vqf-{stage.name}-{number}"
        self.held: list = []
        self.carried: list = []
        self.since = time.monotonic()  # the last sign of progress
        self.working = False
        self.finishing = finishing  # END was taken: this worker finishes the stage
        self.abandoned = False
        self._untimed = 0
        self.stream = None  # this worker's CUDA stream, on a GPU
        self.state: dict[str, Any] = {}  # the stage's per-worker state (see Stage.setup)
        self.lock = threading.Lock()  # what it holds, against a take-over reading it
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)

    # -- for the stage's work function --------------------------------------------------------
    def alive(self) -> bool:
        """False once this worker was abandoned or the run was aborted: stop quietly."""
        return not self.abandoned and not self.runtime.aborted.is_set()

    def progress(self) -> None:
        self.since = time.monotonic()

    @contextmanager
    def untimed(self):
        """Waiting that is not work (a full downstream queue, the byte budget, a fetch with
        its own deadlines): not counted against the stage's deadline."""
        self._untimed += 1
        try:
            yield
        finally:
            self._untimed -= 1
            self.since = time.monotonic()

    def hold(self, jobs) -> None:
        with self.lock:
            self.held = list(jobs)
            self.since = time.monotonic()

    def emit(self, item: Any) -> bool:
        """Hands `item` to the next stage (waiting untimed); False if this worker is gone."""
        with self.untimed():
            return put(self.stage.outbox, item, alive=self.alive)

    def stuck_for(self, now_s: float) -> float:
        if not self.working or self._untimed or self.abandoned:
            return 0.0
        return now_s - self.since

    # -- the thread ---------------------------------------------------------------------------
    def _main(self) -> None:
        runtime, stage = self.runtime, self.stage
        _here.worker = self
        try:
            with runtime.on_device(self):
                if self.carried:
                    self._work(self.carried)
                    self.carried = []
                if not self.finishing:
                    self._loop()
                if self.finishing and self.alive():
                    self._finish()
        except BaseException as e:  # a defect in the runtime or a stage: the run stops
            if self.alive():
                log.exception("%s stopped on an unexpected error", self.name)
                runtime.abort(e, stage=stage)

    def _loop(self) -> None:
        while self.alive():
            batch = self._take()
            if batch is None:
                self._idle()
                continue
            items = [i for i in batch if i is not END]
            if items:
                self._work(items)
            if len(items) < len(batch):
                self.runtime.ended(self)
                return

    def _take(self) -> list | None:
        stage = self.stage
        idle_at = None if stage.idle_s is None else time.monotonic() + stage.idle_s
        while self.alive():
            wait_s = 0.2 if idle_at is None else min(0.2, max(0.0, idle_at - time.monotonic()))
            try:
                first = stage.inbox.get(timeout=wait_s)
                break
            except queue.Empty:
                if idle_at is not None and time.monotonic() >= idle_at:
                    return None
        else:
            return []
        batch = [first]
        until = time.monotonic() + stage.batch_wait_s
        while first is not END and len(batch) < stage.batch:
            try:
                item = stage.inbox.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if item is END:  # END comes alone, so a worker taken over never holds it
                stage.inbox.put(END)
                break
            batch.append(item)
            if stage.ends_batch(item):
                break
        return batch

    def _work(self, items: list) -> None:
        with self.lock:
            self.carried = list(items)
            self.held = [j for item in items for j in self.stage.jobs_of(item)]
            self.since, self.working = time.monotonic(), True
        try:
            self.stage.process(self, items)
        except BaseException as e:
            if self.alive():
                self.runtime.failed(self, e)
        finally:
            with self.lock:
                self.working = False
                self.held, self.carried = [], []

    def _idle(self) -> None:
        """`stage.idle`, timed like work (a batch it runs can get stuck too)."""
        with self.lock:
            self.held, self.since, self.working = [], time.monotonic(), True
        try:
            self.stage.idle(self)
        except BaseException as e:
            if self.alive():
                self.runtime.failed(self, e)
        finally:
            with self.lock:
                self.working, self.held = False, []

    def _finish(self) -> None:
        self.held, self.since, self.working = [], time.monotonic(), True
        try:
            self.stage.finish(self)
        finally:
            self.working = False
        if self.alive():
            self.runtime.closed(self.stage)


class Runtime:
    """Runs stages. The rank calls `watch()` regularly (it takes over stuck workers) and
    `abort()` when the run must stop at once (an output that cannot be written)."""

    def __init__(self, *, device: str, fail, stats):
        self.device = device
        self.fail = fail  # fail(job, VideoError): the row of a video a stage broke on
        self.stats = stats
        self.aborted = threading.Event()
        self.error: BaseException | None = None
        self.error_stage: Stage | None = None
        self.abandoned = 0  # workers given up on (their threads may still hold a core)
        self._lock = threading.Lock()
        self._stages: dict[Stage, _StageState] = {}

    # -- starting and ending ------------------------------------------------------------------
    def start(self, stage: Stage) -> None:
        """Makes the stage's workers (their `setup` runs here) and starts them."""
        state = _StageState()
        with self._lock:
            self._stages[stage] = state
        workers = [self._new_worker(stage, state) for _ in range(stage.workers)]
        with self._lock:
            state.live = len(workers)
            state.workers.extend(workers)
        for w in workers:
            w.thread.start()

    def done(self, stage: Stage) -> threading.Event:
        """Set when the stage has passed END on (or the run was aborted)."""
        return self._stages[stage].done

    def wait(self, stage: Stage, *, every_s: float = 0.5, tick=None) -> bool:
        """Blocks until `stage` is done, calling `watch()` and `tick()` every `every_s`;
        False when the run was aborted first."""
        done = self.done(stage)
        while not done.wait(every_s):
            if self.aborted.is_set():
                return False
            self.watch()
            if tick is not None:
                tick()
        return not self.aborted.is_set()

    def abort(self, error: BaseException | None = None, *, stage: Stage | None = None) -> None:
        """Stops every worker as soon as it looks up; the first error is kept."""
        with self._lock:
            if self.error is None and error is not None:
                self.error, self.error_stage = error, stage
        self.aborted.set()
        for state in list(self._stages.values()):
            state.done.set()

    # -- what workers report ------------------------------------------------------------------
    def failed(self, worker: Worker, error: BaseException) -> None:
        """A work function raised: its videos get failure rows; a fatal stage stops the run."""
        from vqf.engine.job import as_video_error

        stage = worker.stage
        if getattr(stage, "fatal", False):
            self.abort(error, stage=stage)
            return
        video_error = as_video_error(error, stage.error_stage)
        if not isinstance(error, VideoError):
            log.warning("%s failed on %s: %s", worker.name,
                        ",".join(j.video_id for j in worker.held), error)  # fmt: skip
        for job in _unique(worker.held):
            self.fail(job, video_error)

    def ended(self, worker: Worker) -> None:
        """`worker` took END: the last live worker finishes the stage; others pass END on to
        their siblings."""
        stage = worker.stage
        state = self._stages[stage]
        with self._lock:
            state.live -= 1
            last = state.live == 0
            if last:
                state.live = 1  # this worker, now finishing
        if last:
            worker.finishing = True
            return
        stage.inbox.put(END)  # for the siblings; nothing follows END, so there is room

    def closed(self, stage: Stage) -> None:
        """The stage is finished: END to the next stage, exactly once."""
        state = self._stages[stage]
        with self._lock:
            if state.closed:
                return
            state.closed = True
        if stage.outbox is not None:
            put(stage.outbox, END, alive=lambda: not self.aborted.is_set())
        state.done.set()

    # -- deadlines ----------------------------------------------------------------------------
    def watch(self) -> None:
        """Takes over every worker stuck past its stage's deadline."""
        now_s = time.monotonic()
        for stage, state in list(self._stages.items()):
            if stage.deadline_s is None or state.done.is_set():
                continue
            for w in list(state.workers):
                stuck = w.stuck_for(now_s)
                if stuck > stage.deadline_s:
                    self._take_over(stage, state, w, stuck)

    def _take_over(self, stage: Stage, state: _StageState, w: Worker, stuck_s: float) -> None:
        with self._lock, w.lock:
            if w.abandoned or w not in state.workers:
                return
            if w.stuck_for(time.monotonic()) <= stage.deadline_s:  # it moved on meanwhile
                return
            w.abandoned = True
            state.workers.remove(w)
            self.abandoned += 1
            held, carried = _unique(w.held), list(w.carried)
        carried = [i for i in carried if _jobs_open(stage, i)]
        if stage.timeout_counter:
            self.stats.add(stage.timeout_counter)
        for job in held:
            log.error("%s made no progress on %s for %.0f s", w.name, job.video_id, stuck_s)
            self.fail(job, stage.timeout_error(job, stage.deadline_s))
        stage.taken_over(w)
        fresh = self._new_worker(stage, state, finishing=w.finishing)
        fresh.carried = [i for i in carried if all(j not in held for j in stage.jobs_of(i))]
        with self._lock:
            state.workers.append(fresh)
            state.replaced += 1
        fresh.thread.start()

    def replaced(self, stage: Stage) -> int:
        return self._stages[stage].replaced

    # -- threads and devices ------------------------------------------------------------------
    def _new_worker(self, stage: Stage, state: _StageState, *, finishing: bool = False) -> Worker:
        with self._lock:
            state.made += 1
            number = state.made - 1
        w = Worker(self, stage, number, finishing=finishing)
        stage.setup(w)
        return w

    def on_device(self, worker: Worker):
        """The worker's thread works on the rank's GPU (not GPU 0) on a stream of its own."""
        if not self.device.startswith("cuda"):
            return nullcontext()
        import torch

        device = torch.device(self.device)
        torch.cuda.set_device(device)
        worker.stream = torch.cuda.Stream(device=device)
        return torch.cuda.stream(worker.stream)


class _StageState:
    def __init__(self):
        self.workers: list[Worker] = []
        self.live = 0
        self.made = 0
        self.replaced = 0
        self.closed = False
        self.done = threading.Event()


def _unique(jobs) -> list:
    return list({id(j): j for j in jobs}.values())


def _jobs_open(stage: Stage, item: Any) -> bool:
    return not all(getattr(j, "closed", False) for j in stage.jobs_of(item))
