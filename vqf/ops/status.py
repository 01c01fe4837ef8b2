"""The plain status line: one line every few seconds, for logs and terminals alike."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO


def summarize(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Every rank's snapshot folded into job totals."""
    failures: Counter[str] = Counter()
    for s in snaps:
        failures.update(s.get("failures", {}))
    total = sum(s.get("total", 0) for s in snaps)
    written = sum(s.get("written", 0) for s in snaps)
    skipped = sum(s.get("counters", {}).get("rows_skipped_done", 0) for s in snaps)
    elapsed = max((s.get("elapsed_s", 0.0) for s in snaps), default=0.0)
    rate = written / elapsed if elapsed > 0 else 0.0
    left = max(total - skipped - written, 0)
    return {
        "ranks": len(snaps),
        "total": total,
        "written": written,
        "skipped": skipped,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "elapsed_s": elapsed,
        "videos_per_s": rate,
        "eta_s": left / rate if rate > 0 else None,
    }


class StatusLine:
    """Prints job progress as one line; the final call prints a summary."""

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream  # None: sys.stderr, looked up when printing (so it pickles)
        self.started = time.time()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def __call__(self, snaps: list[dict[str, Any]], *, final: bool) -> None:
        s = summarize(snaps)
        done = s["written"] + s["skipped"]
        eta = f"{s['eta_s']:.0f}s" if s["eta_s"] is not None else "?"
        fails = ", ".join(f"{k}={v}" for k, v in sorted(s["failures"].items())) or "none"
        if final:
            print(
                f"vqf: done: {s['total']} rows in, {s['written']} written now, "
                f"{s['skipped']} already done, {s['failed']} failed ({fails}), "
                f"{s['elapsed_s']:.1f}s, {s['videos_per_s']:.2f} videos/s, {s['ranks']} rank(s)",
                file=self.stream,
                flush=True,
            )
        else:
            print(
                f"vqf: {done}/{s['total']} rows, {s['videos_per_s']:.2f} videos/s, eta {eta}, "
                f"failures: {fails}",
                file=self.stream,
                flush=True,
            )
