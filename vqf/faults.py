"""A fault hook for tests and operators: `VQF_FAULT=STAGE:VIDEO_ID:KIND[,STAGE:VIDEO_ID:KIND...]`.

Inert unless the variable is set: `fault_point(stage, video_id)` reads the environment once
per call (a dict lookup) and parses the text only when it changed. When an entry matches
(`VIDEO_ID` `*` matches every video), it does what KIND says:

- `kill`: SIGKILL to this process (the OOM killer, a watchdog);
- `abort`: SIGABRT through abort(3) (a native crash in a decoder or the CUDA driver);
- `hang`: blocks for VQF_FAULT_HANG_S seconds (default: a day), or until `release_hangs()`;
- `oom`: raises torch's OutOfMemoryError;
- `raise`: raises `InjectedFault` (an ordinary exception);
- `full`: raises OSError ENOSPC, as a full disk does.

Stages are the ones a video passes through: fetch, probe, detect, decode, model, write; and
`sink`, where the writer thread writes a group of rows holding the video to the output. The
hook lives beside `errors.py` because every stage calls it, storage included. A video id that
holds a comma cannot be named (commas separate entries); one that holds a colon can.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

from vqf.errors import ConfigError

STAGES = ("fetch", "probe", "detect", "decode", "model", "write", "sink")
KINDS = ("kill", "abort", "hang", "oom", "raise", "full")
ENV = "VQF_FAULT"
HANG_ENV = "VQF_FAULT_HANG_S"
HANG_DEFAULT_S = 86400.0

_HINT = "write VQF_FAULT as STAGE:VIDEO_ID:KIND, several separated by commas"
_released = threading.Event()
_cache: tuple[str, tuple[Fault, ...]] = ("", ())


class InjectedFault(RuntimeError):
    """The `raise` kind: an ordinary exception, as any library might raise."""


@dataclass(frozen=True)
class Fault:
    stage: str
    video_id: str  # "*" matches every video
    kind: str

    def matches(self, stage: str, video_id: str) -> bool:
        return self.stage == stage and self.video_id in ("*", video_id)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """The entries of a VQF_FAULT value; ConfigError naming a bad stage, kind or entry."""
    faults = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        stage, sep, rest = entry.partition(":")
        video_id, sep2, kind = rest.rpartition(":")
        if not (sep and sep2 and video_id):
            raise ConfigError(f"{ENV} entry {entry!r} is not STAGE:VIDEO_ID:KIND", hint=_HINT)
        if stage not in STAGES:
            raise ConfigError(
                f"{ENV} entry {entry!r}: unknown stage {stage!r}",
                hint=f"allowed stages: {', '.join(STAGES)}",
            )
        if kind not in KINDS:
            raise ConfigError(
                f"{ENV} entry {entry!r}: unknown kind {kind!r}",
                hint=f"allowed kinds: {', '.join(KINDS)}",
            )
        faults.append(Fault(stage, video_id, kind))
    return tuple(faults)


def active_faults() -> tuple[Fault, ...]:
    """The faults VQF_FAULT asks for now (parsed once per distinct value). Call it at start
    to refuse a bad value before any video."""
    global _cache
    text = os.environ.get(ENV, "")
    if text != _cache[0]:
        _cache = (text, parse_faults(text))
    return _cache[1]


def fault_point(stage: str, video_id: str) -> None:
    """Does what VQF_FAULT asks for `video_id` at `stage`; nothing when it is unset."""
    if not os.environ.get(ENV):
        return
    if stage not in STAGES:
        raise ValueError(f"fault_point stage {stage!r} is not one of {', '.join(STAGES)}")
    for fault in active_faults():
        if fault.matches(stage, video_id):
            _inject(fault, video_id)


def release_hangs() -> None:
    """Lets every `hang` fault return (tests); later hangs return at once until `reset`."""
    _released.set()


def reset() -> None:
    _released.clear()


def _inject(fault: Fault, video_id: str) -> None:
    what = f"{ENV}: injected {fault.kind} at {fault.stage} of {video_id}"
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "abort":
        os.abort()
    elif fault.kind == "hang":
        _released.wait(_hang_seconds())
    elif fault.kind == "full":
        import errno

        raise OSError(errno.ENOSPC, f"No space left on device ({what})")
    elif fault.kind == "oom":
        import torch

        raise torch.OutOfMemoryError(what)
    else:
        raise InjectedFault(what)


def _hang_seconds() -> float:
    text = os.environ.get(HANG_ENV, "")
    try:
        return float(text) if text else HANG_DEFAULT_S
    except ValueError:
        raise ConfigError(f"{HANG_ENV} = {text!r} is not a number of seconds") from None
