"""Worker threads that may hang: fetch and probe on daemon threads with a slot count, and calls
bounded by a deadline. A thread stuck in C code (a dead mount, a decoder spinning on a crafted
file) cannot be stopped; it is abandoned so that it never blocks the rank or its exit."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from vqf.engine.work import WorkItem
from vqf.schema import now


class Task:
    """One row being fetched and probed on a worker thread."""

    def __init__(self, item: WorkItem):
        self.item = item
        self.started, self.start_time = time.time(), now()
        self.lock = threading.Lock()
        self.probe_started: float | None = None  # monotonic, set when the probe begins
        self.finished = False
        self.abandoned = False


class Workers:
    """Daemon threads for fetch+probe, at most `n` at work. A thread stuck in C code cannot be
    stopped, so a hung one is abandoned (its slot given back) and never blocks the exit."""

    def __init__(self, n: int):
        self._slots = threading.Semaphore(n)

    def submit(self, fn, task: Task) -> Future:
        fut: Future = Future()

        def run() -> None:
            with self._slots_held(task):
                try:
                    fut.set_result(fn(task))
                except BaseException as e:
                    fut.set_exception(e)

        threading.Thread(target=run, name="vqf-prep", daemon=True).start()
        return fut

    @contextmanager
    def _slots_held(self, task: Task):
        self._slots.acquire()
        try:
            yield
        finally:
            with task.lock:
                if not task.abandoned:
                    self._slots.release()

    def give_back(self) -> None:
        self._slots.release()


def call_with_deadline(fn, *, seconds: float, name: str = "vqf-bounded") -> Any:
    """`fn()` on its own daemon thread; TimeoutError when it has not returned after `seconds`."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = fn()
        except BaseException as e:
            box["err"] = e

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"did not finish within {seconds:.0f} s")
    if "err" in box:
        raise box["err"]
    return box["out"]
