"""The project's exception types and the taxonomy of per-video failures.

A failure of one video is data: it is raised as `VideoError` inside a stage and ends as a
failure row carrying `error{type, message, stage}`. Errors that stop a run before it starts
(a bad recipe, an unreadable table) are `ConfigError` / `TableError` and carry a hint.
"""

from __future__ import annotations

from enum import Enum


class ErrorType(str, Enum):
    """Why one video has no result. The value is what the output row carries."""

    ROW_MALFORMED = "row_malformed"
    DUPLICATE_ROW = "duplicate_row"
    PATH_REFUSED = "path_refused"
    NOT_FOUND = "not_found"
    DOWNLOAD_FAILED = "download_failed"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    NOT_A_VIDEO = "not_a_video"
    UNSUPPORTED_CODEC = "unsupported_codec"
    CORRUPT_STREAM = "corrupt_stream"
    TOO_SHORT = "too_short"
    DECODE_FAILED = "decode_failed"
    MODEL_FAILED = "model_failed"
    OUT_OF_MEMORY = "out_of_memory"
    CRASHED = "crashed"  # the process died in this video engine.max_attempts times
    INTERNAL = "internal"


class Stage(str, Enum):
    """Where in the data flow a video failed."""

    TABLE = "table"
    FETCH = "fetch"
    PROBE = "probe"
    PLAN = "plan"
    DECODE = "decode"
    DETECT = "detect"
    MODEL = "model"
    AGGREGATE = "aggregate"
    WRITE = "write"


class VqfError(Exception):
    """Base of every error vqf raises on purpose. `hint` tells the user what to do."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class StuckThreads(VqfError):
    """Too many threads are stuck past their deadlines: the rank stopped taking videos, wrote
    every row it had, and exits with `EXIT_CODE` so that its launcher starts it afresh."""

    EXIT_CODE = 75  # EX_TEMPFAIL: try again


class Stopped(VqfError):
    """A stop was asked for (SIGTERM, Ctrl-C): finished rows are written and committed, the
    rest are left for the rerun, charged nothing. Exits 128 + the signal's number."""

    def __init__(self, message: str, *, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class OutputFailed(VqfError):
    """The output cannot be written (a full disk, a lost table): the rank stops at once."""

    EXIT_CODE = 74  # EX_IOERR


class ConfigError(VqfError):
    """A recipe or a command-line override is wrong; the run cannot start."""


class TableError(VqfError):
    """An input or output table cannot be opened, read or written."""


class StorageError(VqfError):
    """A storage tier is misconfigured (not a per-video miss: those are VideoError)."""


class VideoError(VqfError):
    """One video failed; becomes that video's failure row, the run goes on."""

    def __init__(self, type: ErrorType, message: str, *, stage: Stage, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.type = ErrorType(type)
        self.stage = Stage(stage)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type.value, "message": self.message, "stage": self.stage.value}

    def __reduce__(self):  # keep the fields when crossing a process boundary
        return (_rebuild_video_error, (self.type, self.message, self.stage, self.hint))


def _rebuild_video_error(type, message, stage, hint):
    return VideoError(type, message, stage=stage, hint=hint)
