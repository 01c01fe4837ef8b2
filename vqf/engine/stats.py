"""Thread-safe counters and stage timings of one rank, for the status line, dashboard and profiler."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from typing import Any


class RankStats:
    """What one rank has done so far. Every method is safe to call from any thread."""

    def __init__(self, *, rank: int = 0, world_size: int = 1, device: str = "cpu"):
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.started = time.time()
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.recent_failures: deque[tuple[str, str, str]] = deque(maxlen=5)
        self.stage_seconds: dict[str, float] = defaultdict(float)
        self.stage_items: Counter[str] = Counter()
        self.spans: list[tuple[str, str, float, float]] = []  # (stage, label, start, end)
        self.keep_spans = False
        self.total = 0
        self.queues: dict[str, Any] = {}  # name -> anything with qsize()
        self.probes: dict[str, Any] = {}  # snapshot key -> callable read at each snapshot
        self._nvtx = _nvtx(device)

    def add(self, key: str, n: float = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def failure(self, video_id: str, error_type: str, message: str) -> None:
        with self._lock:
            self.failures[error_type] += 1
            self.recent_failures.append((video_id, error_type, message[:200]))

    @contextmanager
    def stage(self, name: str, *, items: int = 1, label: str = ""):
        """Times a stage; spans are kept for the profiler's trace when `keep_spans` is set.
        On CUDA the stage is also an NVTX range, so Nsight Systems shows the pipeline."""
        start = time.time()
        if self._nvtx is not None:
            self._nvtx.range_push(f"{name} {label}" if label else name)
        try:
            yield
        finally:
            if self._nvtx is not None:
                self._nvtx.range_pop()
            end = time.time()
            with self._lock:
                self.stage_seconds[name] += end - start
                self.stage_items[name] += items
                if self.keep_spans:
                    self.spans.append((name, label, start, end))

    def snapshot(self) -> dict[str, Any]:
        """Plain data, for the torch.distributed store and the dashboard."""
        extra = {}
        for key, probe in list(self.probes.items()):  # outside the lock: NVML calls can be slow
            try:
                extra[key] = probe()
            except Exception:  # a probe must never stop progress reporting
                pass
        with self._lock:
            elapsed = max(time.time() - self.started, 1e-6)
            written = self.counters["rows_written"]
            return {
                "rank": self.rank,
                "world_size": self.world_size,
                "device": self.device,
                "elapsed_s": elapsed,
                "total": self.total,
                "written": written,
                "videos_per_s": written / elapsed,
                "counters": dict(self.counters),
                "failures": dict(self.failures),
                "recent_failures": list(self.recent_failures),
                "stage_seconds": dict(self.stage_seconds),
                "stage_items": dict(self.stage_items),
                "queues": {k: q.qsize() for k, q in self.queues.items()},
                **extra,
            }


def _nvtx(device: str):
    """torch's NVTX module on a CUDA rank (ranges are per thread, as the stages are), else None."""
    if not str(device).startswith("cuda"):
        return None
    import torch.cuda.nvtx

    return torch.cuda.nvtx
