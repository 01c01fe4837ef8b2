"""Retries with exponential backoff and jitter, and telling timeouts from other failures."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Stalled(TimeoutError):
    """A transfer ran past its per-request deadline while bytes were still trickling in."""


def with_retries(
    call: Callable[[], T],
    *,
    attempts: int,
    backoff_s: float,
    backoff_max_s: float,
    retryable: Callable[[BaseException], bool],
) -> T:
    """`call()`, retried on retryable errors; the last error is raised when attempts run out.

    The n-th wait is drawn from [d/2, d] with d = min(backoff_max_s, backoff_s * 2**n), so
    many workers hitting the same overloaded server spread out instead of retrying in step.
    """
    attempts = max(1, attempts)
    for attempt in range(attempts):
        try:
            return call()
        except Exception as e:
            if attempt == attempts - 1 or not retryable(e):
                raise
            delay = min(backoff_max_s, backoff_s * 2**attempt)
            time.sleep(random.uniform(delay / 2, delay))
    raise AssertionError("unreachable")


def is_timeout(error: BaseException) -> bool:
    """Whether a timeout is anywhere in the error's chain (wrapped by requests/oss2 or not)."""
    seen: set[int] = set()
    todo: list[object] = [error]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (TimeoutError, socket.timeout)) or type(e).__name__.endswith(
            ("Timeout", "TimeoutError")
        ):
            return True
        todo.extend([e.__cause__, e.__context__, getattr(e, "exception", None), *e.args])
        todo.append(getattr(e, "reason", None))
    return False
