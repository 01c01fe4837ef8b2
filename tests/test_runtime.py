"""The stage runtime on its own: end markers, deadlines, take-overs, errors, in a few seconds."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch  # noqa: F401  (loaded once here: the runtime's error path reads torch's OOM type)

from vqf.engine.runtime import END, Runtime, Stage
from vqf.engine.stats import RankStats


@dataclass(eq=False)
class Job:
    video_id: str
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class Recorder:
    def __init__(self):
        self.failed: dict[str, str] = {}

    def fail(self, job, error) -> None:
        job.closed = True
        self.failed[job.video_id] = error.type.value


class Doubler(Stage):
    """Emits each job; sleeps `work_s` working, or hangs for `hang` videos."""

    name = "double"

    def __init__(self, *, hang=(), boom=(), work_s=0.0, **kw):
        super().__init__(**kw)
        self.hang, self.boom, self.work_s = set(hang), set(boom), work_s
        self.release = threading.Event()
        self.finished = 0

    def process(self, worker, items):
        for job in items:
            if job.video_id in self.hang:
                self.release.wait(30)
                continue
            if job.video_id in self.boom:
                raise RuntimeError(f"boom on {job.video_id}")
            time.sleep(self.work_s)
            worker.emit(job)

    def finish(self, worker):
        self.finished += 1


def drain(q: queue.Queue, timeout: float = 30) -> list:
    """Items until END; fails if END comes twice or not at all."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        item = q.get(timeout=max(0.01, deadline - time.monotonic()))
        if item is END:
            break
        out.append(item)
    time.sleep(0.2)
    assert q.empty(), "END forwarded more than once"
    return out


def make(stage_kw, *, n, workers=3, deadline_s=None):
    inbox, outbox = queue.Queue(maxsize=4), queue.Queue()
    recorder = Recorder()
    runtime = Runtime(device="cpu", fail=recorder.fail, stats=RankStats())
    stage = Doubler(inbox=inbox, outbox=outbox, workers=workers, deadline_s=deadline_s,
                    **stage_kw)  # fmt: skip
    runtime.start(stage)
    jobs = [Job(f"v{i}") for i in range(n)]

    def feed():
        for job in jobs:
            inbox.put(job)
        inbox.put(END)

    threading.Thread(target=feed, daemon=True).start()
    return runtime, stage, outbox, recorder, jobs


def test_end_is_forwarded_once_after_every_item_by_several_workers():
    runtime, stage, outbox, recorder, jobs = make({"work_s": 0.01}, n=20, workers=3)
    got = drain(outbox)
    assert sorted(j.video_id for j in got) == sorted(j.video_id for j in jobs)
    assert stage.finished == 1 and not recorder.failed


def test_an_exception_fails_only_the_videos_its_worker_held():
    runtime, stage, outbox, recorder, jobs = make({"boom": {"v3"}}, n=8)
    got = drain(outbox)
    assert recorder.failed == {"v3": "decode_failed"}  # the stage names the failure's type
    assert len(got) == 7


def test_a_stuck_worker_is_taken_over_and_the_end_still_comes():
    runtime, stage, outbox, recorder, jobs = make({"hang": {"v2"}}, n=6, workers=1,
                                                  deadline_s=0.5)  # fmt: skip
    done = threading.Thread(target=lambda: runtime.wait(stage, every_s=0.05), daemon=True)
    done.start()
    got = drain(outbox, timeout=15)
    stage.release.set()
    assert recorder.failed == {"v2": "timeout"}
    assert sorted(j.video_id for j in got) == ["v0", "v1", "v3", "v4", "v5"]
    assert runtime.abandoned == 1 and runtime.replaced(stage) == 1


def test_waiting_downstream_is_not_stuck():
    """A full outbox keeps the workers waiting 1.5 s, three times the deadline."""
    inbox, outbox = queue.Queue(), queue.Queue(maxsize=1)
    recorder = Recorder()
    runtime = Runtime(device="cpu", fail=recorder.fail, stats=RankStats())
    stage = Doubler(inbox=inbox, outbox=outbox, workers=2, deadline_s=0.5)
    runtime.start(stage)
    for i in range(4):
        inbox.put(Job(f"v{i}"))
    inbox.put(END)
    watcher = threading.Thread(target=lambda: runtime.wait(stage, every_s=0.05), daemon=True)
    watcher.start()
    got = []
    for _ in range(4):
        time.sleep(0.5)
        got.append(outbox.get(timeout=5))
    assert outbox.get(timeout=5) is END
    assert not recorder.failed and runtime.abandoned == 0


class Tail(Stage):
    """Holds items until the end, then works on them in `finish`, hanging on the first try."""

    name = "tail"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pending: list = []
        self.tries = 0

    def process(self, worker, items):
        self.pending += items

    def finish(self, worker):
        self.tries += 1
        if self.tries == 1:
            worker.hold(self.pending[:1])
            time.sleep(30)  # stuck after the end marker
        while self.pending and worker.alive():
            job = self.pending.pop(0)
            if not job.closed:
                worker.emit(job)


def test_a_worker_stuck_after_the_end_is_replaced_by_one_that_finishes():
    inbox, outbox = queue.Queue(), queue.Queue()
    recorder = Recorder()
    runtime = Runtime(device="cpu", fail=recorder.fail, stats=RankStats())
    stage = Tail(inbox=inbox, outbox=outbox, deadline_s=0.5)
    runtime.start(stage)
    for i in range(3):
        inbox.put(Job(f"v{i}"))
    inbox.put(END)
    assert runtime.wait(stage, every_s=0.05)
    assert recorder.failed == {"v0": "timeout"}
    assert [j.video_id for j in drain(outbox)] == ["v1", "v2"]


def test_a_fatal_stage_aborts_the_run():
    class Sink(Stage):
        name = "write"
        fatal = True

        def jobs_of(self, item):
            return []

        def process(self, worker, items):
            raise OSError(28, "No space left on device")

    inbox = queue.Queue()
    runtime = Runtime(device="cpu", fail=None, stats=RankStats())
    stage = Sink(inbox=inbox, outbox=None)
    runtime.start(stage)
    inbox.put({"video_id": "a"})
    assert runtime.wait(stage, every_s=0.05) is False
    assert isinstance(runtime.error, OSError)


@pytest.mark.gpu
def test_workers_run_on_the_ranks_gpu_with_their_own_streams():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    seen = []

    class Where(Stage):
        name = "where"

        def process(self, worker, items):
            seen.append((torch.cuda.current_device(), torch.cuda.current_stream()))
            worker.emit(items[0])

    inbox, outbox = queue.Queue(), queue.Queue()
    runtime = Runtime(device="cuda:1", fail=None, stats=RankStats())
    stage = Where(inbox=inbox, outbox=outbox, workers=2)
    runtime.start(stage)
    for i in range(4):
        inbox.put(Job(f"v{i}"))
    inbox.put(END)
    assert runtime.wait(stage, every_s=0.05)
    assert {device for device, _ in seen} == {1}
    assert all(stream != torch.cuda.default_stream(1) for _, stream in seen)


class Idler(Stage):
    """Keeps items until the inbox is quiet, then works on them in `idle`, hanging once."""

    name = "idler"
    idle_s = 0.05

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pending: list = []
        self.hung = False

    def process(self, worker, items):
        worker.carried = []
        self.pending += items

    def idle(self, worker):
        if not self.pending:
            return
        job = self.pending.pop(0)
        worker.hold([job])
        if not self.hung:
            self.hung = True
            time.sleep(30)
        worker.emit(job)


def test_work_done_while_idle_is_timed_too():
    inbox, outbox = queue.Queue(), queue.Queue()
    recorder = Recorder()
    runtime = Runtime(device="cpu", fail=recorder.fail, stats=RankStats())
    stage = Idler(inbox=inbox, outbox=outbox, deadline_s=0.5)
    runtime.start(stage)
    for i in range(3):
        inbox.put(Job(f"v{i}"))
    deadline = time.monotonic() + 30
    while outbox.qsize() < 2 and time.monotonic() < deadline:
        runtime.watch()
        time.sleep(0.05)
    inbox.put(END)
    assert recorder.failed == {"v0": "timeout"}
    assert [j.video_id for j in drain(outbox)] == ["v1", "v2"]
