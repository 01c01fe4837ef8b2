"""Crash accounting: each rank journals the videos in flight, so a video that kills the
process (a decoder segfault, a CUDA fatal error, the OOM killer) is not retried for ever.

A journal is one JSON-lines file per rank. `enter` appends a line before the video goes into
a stage that can kill the process; `ready` when its finished row is handed to the writer (a
death from then on is not the video's doing); `leave` when the row is durable; `interrupt`
when a stop (SIGTERM, Ctrl-C, an output that cannot be written) ends the run with the video
still in flight. On open, the file is replayed: every video entered and never made ready,
left or interrupted was in flight when the process died, and counts one crash more. A video
with `max_attempts` crashes is quarantined: it gets a `crashed` failure row (`crash_error`)
instead of another attempt. The file is then compacted to the crash counts alone; a clean
finish removes it.

Appends reach the page cache at once, which survives the process dying; a background thread
fsyncs them in groups (`sync_every_s`), so no stage thread ever waits on the disk, and a
machine that dies loses at most that much of the journal (an attempt not counted, never a
row: the output decides what is done).

Wiring into the rank (the engine owns these calls):

```
journal = Journal(journal_path(recipe, rank), max_attempts=recipe.engine.max_attempts)
work = select_work(...)                                   # rows the output already holds: skipped
quarantined rows get crash_error(...) as their failure row; other crashed rows are suspects,
run one at a time with nothing else in flight, each row durable before the next starts
journal.enter(video_id, key, STAGE)     # before fetch, probe, detect, decode, model, write
journal.ready([key])                    # its row is in the writer's queue
writer(on_written=journal.leave_many)   # leave once sink.write returned
journal.interrupt(keys)                 # a stop: rows still in flight are charged nothing
sink.close(); journal.close(clean=True)                   # only after every row is durable
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vqf.config import Recipe
from vqf.errors import ConfigError, ErrorType, Stage, VideoError
from vqf.tables.base import fsync_dir

log = logging.getLogger(__name__)

JOURNAL_DIR = ".vqf-journal"


@dataclass(frozen=True)
class Crashes:
    """How often the process died with a video in flight, and in which stage the last time."""

    attempts: int
    stage: str
    video_id: str = ""


def row_key(*, index: int, video_id: str) -> str:
    """A row's identity across restarts: its position in the input table and its video_id
    (one video_id may appear in several rows)."""
    return f"{index}:{video_id}"


def journal_path(recipe: Recipe, rank: int) -> Path:
    """Where rank's journal lives: beside local outputs, or under engine.state_dir in a
    folder of the job's own (named by its input and output tables, so jobs sharing a
    state_dir never read each other's crashes). Outputs in ODPS have no local folder, so
    they need engine.state_dir."""
    name = f"rank-{rank:05d}.jsonl"
    if recipe.engine.state_dir:
        job = hashlib.sha256(f"{recipe.tables}\n{recipe.outputs}".encode()).hexdigest()[:12]
        return Path(recipe.engine.state_dir).expanduser() / JOURNAL_DIR / job / name
    outputs = recipe.outputs
    if outputs.lower().startswith("odps://"):
        raise ConfigError(
            f"outputs {outputs!r} are in ODPS, so the crash journal needs engine.state_dir",
            hint="set engine.state_dir to a folder that outlives a restart of the rank, "
            "e.g. --set engine.state_dir=/mnt/disk/vqf-state/<job>",
        )
    if outputs.lower().startswith("file://"):
        outputs = outputs[len("file://") :]
    if not outputs:
        raise ConfigError("outputs is empty, so the crash journal has no place to live")
    return Path(outputs).expanduser() / JOURNAL_DIR / name


def crash_error(crashes: Crashes, *, max_attempts: int) -> VideoError:
    """The failure row's error for a quarantined video."""
    return VideoError(
        ErrorType.CRASHED,
        f"the process died {crashes.attempts} times while this video was in flight "
        f"(last in stage {crashes.stage}); engine.max_attempts = {max_attempts}",
        stage=Stage(crashes.stage),
        hint="look for a decoder crash or the OOM killer in the rank's log; raise "
        "engine.max_attempts to try it again",
    )


class Journal:
    """One rank's videos in flight, durable across process deaths. Thread-safe."""

    def __init__(self, path: Path, *, max_attempts: int, sync_every_s: float = 0.5):
        if max_attempts < 1:
            raise ConfigError(f"engine.max_attempts = {max_attempts} must be at least 1")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._lock = threading.RLock()  # reentrant: a second Ctrl-C settles it from the main thread
        self._in_flight: dict[str, tuple[str, str]] = {}  # key -> (video_id, stage)
        self._crashes = self._replay()
        self._compact()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = False
        self._closing = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_loop, args=(sync_every_s,), name="vqf-journal", daemon=True
        )
        self._syncer.start()

    # -- at start ----------------------------------------------------------------------------
    def crashed(self) -> dict[str, Crashes]:
        """Every row the process died in before, by key, quarantined ones included."""
        return dict(self._crashes)

    def quarantined(self, key: str) -> str | None:
        """The stage a row was in at its last crash, when it used up its attempts; else None."""
        crashes = self._crashes.get(key)
        if crashes is None or crashes.attempts < self.max_attempts:
            return None
        return crashes.stage

    # -- while running -----------------------------------------------------------------------
    def enter(self, video_id: str, key: str, stage: str) -> None:
        """Records that `key` goes into `stage`: a death of the process from now on counts
        against it (the line is in the page cache when this returns)."""
        self.enter_many([(video_id, key)], stage)

    def enter_many(self, items: Iterable[tuple[str, str]], stage: str) -> None:
        """`enter` for a batch of (video_id, key), with one write."""
        Stage(stage)  # a typo would otherwise surface only in a crashed row
        items = list(items)
        lines = [{"op": "enter", "key": k, "video_id": v, "stage": stage} for v, k in items]
        with self._lock:
            self._append(lines)
            for video_id, key in items:
                self._in_flight[key] = (video_id, stage)

    def leave(self, key: str) -> None:
        """Records that `key`'s row was written."""
        self.leave_many([key])

    def leave_many(self, keys: Iterable[str | None]) -> None:
        self._settle(keys, "leave")

    def ready(self, keys: Iterable[str | None]) -> None:
        """`keys`' rows are finished and queued for the writer: not charged if the process
        dies before they are durable (the rerun judges them again)."""
        self._settle(keys, "ready")

    def interrupt(self, keys: Iterable[str | None]) -> None:
        """A stop ends the run with `keys` in flight: charged nothing, judged by the rerun."""
        self._settle(keys, "interrupted")
        self.flush()

    def _settle(self, keys: Iterable[str | None], op: str) -> None:
        keys = [k for k in keys if k is not None]
        with self._lock:
            self._append([{"op": op, "key": k} for k in keys])
            for key in keys:
                self._in_flight.pop(key, None)

    def flush(self) -> None:
        """Makes every line so far durable on the disk (fsync)."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def _sync_loop(self, every_s: float) -> None:
        while not self._closing.wait(every_s):
            try:
                self.flush()
            except OSError as e:  # a full or failing disk: the writer will say so too
                log.warning("journal %s: fsync failed: %s", self.path, e)

    def in_flight(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            return dict(self._in_flight)

    def close(self, *, clean: bool) -> None:
        """Clean (every row durable): the journal is removed. Otherwise it stays for the next
        start, which counts what is still in flight as crashed."""
        self._closing.set()
        with self._lock:
            if self._fd is None:
                return
            if self._dirty:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if not clean:
                return
            if self._in_flight:
                log.warning(
                    "journal %s: %d rows entered and never left at a clean finish",
                    self.path,
                    len(self._in_flight),
                )
            self.path.unlink(missing_ok=True)
            fsync_dir(self.path.parent)

    # -- the file ----------------------------------------------------------------------------
    def _append(self, lines: list[dict]) -> None:
        if self._fd is None:
            raise RuntimeError(f"journal {self.path} is closed")
        if not lines:
            return
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
        os.write(self._fd, data.encode())  # in the page cache: survives the process dying
        self._dirty = True  # the syncer makes it survive the machine too

    def _replay(self) -> dict[str, Crashes]:
        crashes: dict[str, Crashes] = {}
        in_flight: dict[str, tuple[str, str]] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return crashes
        for number, line in enumerate(text.splitlines(), 1):
            try:
                entry = json.loads(line)
                op, key = entry["op"], entry["key"]
            except (ValueError, KeyError, TypeError):  # a line torn by the crash itself
                log.warning("journal %s: line %d unreadable, ignored", self.path, number)
                continue
            if op == "crash":
                crashes[key] = Crashes(
                    int(entry["attempts"]), entry["stage"], entry.get("video_id", "")
                )
            elif op == "enter":
                in_flight[key] = (entry.get("video_id", ""), entry["stage"])
            elif op in ("leave", "ready", "interrupted"):
                in_flight.pop(key, None)
        for key, (video_id, stage) in in_flight.items():
            before = crashes.get(key)
            attempts = (before.attempts if before else 0) + 1
            crashes[key] = Crashes(attempts, stage, video_id)
            log.warning(
                "%s was in stage %s when the process died (crash %d of at most %d)",
                video_id or key,
                stage,
                attempts,
                self.max_attempts,
            )
        return crashes

    def _compact(self) -> None:
        """Rewrites the file as the crash counts alone (atomically: a crash here is harmless)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        lines = [
            {
                "op": "crash",
                "key": k,
                "video_id": c.video_id,
                "attempts": c.attempts,
                "stage": c.stage,
            }
            for k, c in self._crashes.items()
        ]
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
