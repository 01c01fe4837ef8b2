"""Calls bounded by a deadline, for the few places outside the stage runtime (the write
stage's fault hook, storage). A thread stuck in C code (a dead mount, a decoder spinning on a
crafted file) cannot be stopped; it is abandoned so that it never blocks the rank or its exit."""

from __future__ import annotations

import threading
from typing import Any


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
