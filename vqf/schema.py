"""Input and output rows: the seed's table layout (DESIGN.md section 5).

Input columns: video_id, oss_bucket, video_path, video_tag, info (a JSON string; may carry
`use_alluxio`). Output columns: video_id, oss_bucket, video_oss_url, video_tag, info,
result_info. In every table `info` and `result_info` are JSON *strings* (the seed's ODPS
columns are strings), so one record shape serves JSONL, Parquet and ODPS alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from vqf.errors import ErrorType, Stage, VideoError

INPUT_COLUMNS = ("video_id", "oss_bucket", "video_path", "video_tag", "info")
OUTPUT_COLUMNS = ("video_id", "oss_bucket", "video_oss_url", "video_tag", "info", "result_info")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class InputRow:
    """One video to judge, as the input table gives it."""

    video_id: str
    oss_bucket: str
    video_path: str
    video_tag: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def use_alluxio(self) -> bool:
        value = self.info.get("use_alluxio", False)
        return value is True or str(value).lower() in ("true", "1", "yes")

    @property
    def uri(self) -> str:
        """Where the video lives, as the output's `video_oss_url` names it."""
        path = self.video_path
        if self.oss_bucket and "://" not in path and not path.startswith("/"):
            return f"oss://{self.oss_bucket}/{path}"
        return path


def parse_input_row(raw: dict[str, Any]) -> InputRow:
    """Validates one raw table record; a bad one raises VideoError(ROW_MALFORMED)."""
    if not isinstance(raw, dict):
        raise _malformed(f"row is a {type(raw).__name__}, not a record")
    video_id = raw.get("video_id")
    if video_id is None or str(video_id).strip() == "":
        raise _malformed("row has no video_id")
    path = raw.get("video_path")
    if not isinstance(path, str) or not path.strip():
        raise _malformed("row has no video_path")
    info = raw.get("info")
    if info is None or info == "":
        info = {}
    elif isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as e:
            raise _malformed(f"info is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(info, dict):
        raise _malformed(f"info must be a JSON object, got {type(info).__name__}")
    return InputRow(
        video_id=str(video_id),
        oss_bucket=str(raw.get("oss_bucket") or ""),
        video_path=path.strip(),
        video_tag=str(raw.get("video_tag") or ""),
        info=info,
    )


def _malformed(message: str) -> VideoError:
    return VideoError(ErrorType.ROW_MALFORMED, message, stage=Stage.TABLE)


def now() -> str:
    return time.strftime(TIME_FORMAT, time.localtime())


@dataclass
class DeviceInfo:
    """What the result_info says about the device that produced a row."""

    name: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)


def _row_identity(raw: dict[str, Any], row: InputRow | None) -> dict[str, str]:
    if row is not None:
        return {
            "video_id": row.video_id,
            "oss_bucket": row.oss_bucket,
            "video_oss_url": row.uri,
            "video_tag": row.video_tag,
        }
    return {
        "video_id": str(raw.get("video_id", "") if isinstance(raw, dict) else ""),
        "oss_bucket": str(raw.get("oss_bucket") or "") if isinstance(raw, dict) else "",
        "video_oss_url": str(raw.get("video_path") or "") if isinstance(raw, dict) else "",
        "video_tag": str(raw.get("video_tag") or "") if isinstance(raw, dict) else "",
    }


def success_record(
    row: InputRow,
    info: dict[str, Any],
    *,
    start_time: str,
    end_time: str,
    cost_s: float,
    device: DeviceInfo,
    video_oss_url: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The output record of a video every enabled filter judged."""
    record = _row_identity({}, row)
    if video_oss_url:
        record["video_oss_url"] = video_oss_url
    result_info = {
        "succeed": "true",
        "start_time": start_time,
        "end_time": end_time,
        "avg_cost": round(cost_s, 4),
        "device_name": device.name,
        "device_info": device.info,
        **(extra or {}),
    }
    record["info"] = json.dumps(info, ensure_ascii=False, sort_keys=True)
    record["result_info"] = json.dumps(result_info, ensure_ascii=False, sort_keys=True)
    return record


def failure_record(
    raw: dict[str, Any],
    error: VideoError,
    *,
    row: InputRow | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
    cost_s: float = 0.0,
    device: DeviceInfo | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The output record of a video that has no result; `raw` is its input record."""
    record = _row_identity(raw, row)
    device = device or DeviceInfo()
    stamp = now()
    result_info = {
        "succeed": "false",
        "start_time": start_time or stamp,
        "end_time": end_time or stamp,
        "avg_cost": round(cost_s, 4),
        "device_name": device.name,
        "device_info": device.info,
        "error": error.to_dict(),
        **(extra or {}),
    }
    record["info"] = json.dumps({}, sort_keys=True)
    record["result_info"] = json.dumps(result_info, ensure_ascii=False, sort_keys=True)
    return record


def decode_record(record: dict[str, Any]) -> dict[str, Any]:
    """An output record with `info` and `result_info` parsed back into objects."""
    out = dict(record)
    for key in ("info", "result_info"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = json.loads(value) if value else {}
    return out


def filter_result(probs: dict[str, float]) -> dict[str, Any]:
    """A filter's object: `{"result": {label: prob}, "label": best, "prob": best_prob}`."""
    probs = {label: round(float(p), 6) for label, p in probs.items()}
    best = max(probs, key=probs.__getitem__)
    return {"result": probs, "label": best, "prob": probs[best]}
