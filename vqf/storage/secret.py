"""Keeps configured secrets (OSS access keys) out of messages and logs."""

from __future__ import annotations

import logging
import threading

MASK = "***"
# Shorter values would mask ordinary words; real access keys are much longer.
_MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_guarded: set[str] = set()


def add_secret(value: str) -> None:
    """Registers a value that `redact` masks from now on, in this process."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every configured secret replaced by `***`."""
    text = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for value in secrets:
        text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in a record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_FILTER = RedactingFilter()


def guard_logger(name: str) -> None:
    """Adds the redacting filter to logger `name` and its existing children.

    A logger's own filters do not see records of its children, so each one gets it; oss2
    logs request headers (with the access key id) at debug level.
    """
    names = [name] + [n for n in logging.root.manager.loggerDict if n.startswith(name + ".")]
    with _lock:
        todo = [n for n in names if n not in _guarded]
        _guarded.update(todo)
    for n in todo:
        logging.getLogger(n).addFilter(_FILTER)
