"""What a section's code gets (`Section`) and the JSON files the check reads and writes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vqf.bench.gpu_check.modes import RESULTS, Mode


class Section:
    """What a section's code gets: the mode, folders, earlier results, and `save` for partial
    results (a section cut off at its limit leaves what it saved)."""

    def __init__(self, name: str, *, mode: Mode, out: Path, work: Path, limit: float):
        self.name, self.mode, self.out, self.work, self.limit = name, mode, out, work, limit
        self.started = time.monotonic()
        self.result: dict[str, Any] = {}
        self.prior = read_json(out / RESULTS).get("sections", {})

    def left(self) -> float:
        return self.limit - (time.monotonic() - self.started)

    def earlier(self, name: str) -> dict[str, Any]:
        """The result another section left in this run's report ({} when none)."""
        return (self.prior.get(name) or {}).get("result") or {}

    def save(self, result: dict[str, Any] | None = None, *, error: str | None = None) -> None:
        if result is not None:
            self.result = result
        data: dict[str, Any] = {"result": self.result}
        if error:
            data["error"] = error
        write_json(self.work / f"section-{self.name}.json", data)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
