"""Turning a rank's slice of the input table into work, skipping what the output already holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vqf.errors import ErrorType, Stage, VideoError
from vqf.schema import InputRow, parse_input_row


@dataclass
class WorkItem:
    """One input row of this rank: a parsed row to process, or an error to write as is."""

    index: int  # position in the whole input table
    raw: dict[str, Any]
    row: InputRow | None
    error: VideoError | None = None

    @property
    def video_id(self) -> str:
        return self.row.video_id if self.row else str(_raw_id(self.raw))


def _raw_id(raw: Any) -> str:
    if isinstance(raw, dict) and raw.get("video_id") is not None:
        return str(raw["video_id"])
    return ""


def select_work(records: Iterable[dict], *, start: int, done) -> list[WorkItem]:
    """The rows still to do, in table order.

    A row is done when the output holds a row with its table position (`done.rows`, from
    `result_info.row`), so repeated video_ids never stand in for each other. Output rows
    written without a position count by video_id (`done.by_video_id`): the k-th row of an id
    in this slice is done when the output holds at least k of them. A later row repeating a
    video_id of this slice becomes a DUPLICATE_ROW failure instead of judging the same video
    twice.
    """
    seen: Counter[str] = Counter()
    first_at: dict[str, int] = {}
    work: list[WorkItem] = []
    for offset, raw in enumerate(records):
        index = start + offset
        video_id = _raw_id(raw)
        seen[video_id] += 1
        if index in done.rows or seen[video_id] <= done.by_video_id[video_id]:
            first_at.setdefault(video_id, index)
            continue
        item = WorkItem(index=index, raw=raw, row=None)
        if isinstance(raw, dict) and "_malformed" in raw:
            item.error = VideoError(
                ErrorType.ROW_MALFORMED,
                f"table row {index}: {raw['_malformed']}",
                stage=Stage.TABLE,
            )
        else:
            try:
                item.row = parse_input_row(raw)
            except VideoError as e:
                item.error = VideoError(e.type, f"table row {index}: {e.message}", stage=e.stage)
        if item.error is None and video_id in first_at:
            item.error = VideoError(
                ErrorType.DUPLICATE_ROW,
                f"video_id {video_id!r} already appears at table row {first_at[video_id]}",
                stage=Stage.TABLE,
            )
        first_at.setdefault(video_id, index)
        work.append(item)
    return work
