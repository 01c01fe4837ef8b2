"""One video on its way through the rank's stages, and how a stage's exception becomes data."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vqf.engine.work import WorkItem
from vqf.errors import ErrorType, Stage, VideoError
from vqf.schema import now


@dataclass(eq=False)
class VideoJob:
    """A row being judged. Stages fill it in; the recorder turns it into the row it is owed.

    `clips_out` counts (clip, model) passes handed to the model stage and not yet done; the
    video is finished when decode is over and that count is back to zero.
    """

    item: WorkItem
    started: float = field(default_factory=time.time)
    start_time: str = field(default_factory=now)
    fetched: Any = None  # vqf.storage.FetchedVideo
    prepared: Any = None  # vqf.video.Prepared
    roi: Any = None  # vqf.video.Roi in the displayed frame, or None
    detect_info: dict = field(default_factory=dict)
    frame_info: dict = field(default_factory=dict)
    results: dict[str, list] = field(default_factory=dict)  # filter name -> ClipResults
    clips_out: int = 0
    decoded: bool = False
    closed: bool = False  # its row has been handed to the recorder
    frames_decoded: int = 0
    export: Any = None  # Future of the cropped-video export, when one runs
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def video_id(self) -> str:
        return self.item.video_id

    @property
    def key(self) -> str:
        """The row's key in the crash journal."""
        from vqf.engine.journal import row_key

        return row_key(index=self.item.index, video_id=self.item.video_id)

    def release(self) -> None:
        """Gives the fetched file back to the cache (once; safe from any thread)."""
        with self.lock:
            fetched, self.fetched = self.fetched, None
        if fetched is not None:
            fetched.release()


def as_video_error(e: BaseException, stage: Stage) -> VideoError:
    """Any exception of a stage as the typed failure the row records."""
    if isinstance(e, VideoError):
        return e
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return VideoError(ErrorType.OUT_OF_MEMORY, str(e)[:500], stage=stage)
    if isinstance(e, TimeoutError):
        return VideoError(ErrorType.TIMEOUT, str(e) or "timed out", stage=stage)
    kind = ErrorType.DECODE_FAILED if stage == Stage.DECODE else ErrorType.INTERNAL
    if stage in (Stage.MODEL, Stage.DETECT):
        kind = ErrorType.MODEL_FAILED
    return VideoError(kind, f"{type(e).__name__}: {e}"[:1000], stage=stage)
