"""Starting ranks: one process, `--gpus N` through torch.multiprocessing, or torchrun's environment.

One rank per GPU. Under torchrun, RANK / WORLD_SIZE / LOCAL_RANK come from its environment;
`vqf run --gpus N` spawns N ranks on this machine itself; with neither, one rank. Ranks meet in
a torch.distributed process group (gloo on CPU, NCCL never needed: only its store is used),
so progress reaches rank 0 through the store. Barriers and shared values poll that store with
no deadline, and a dead peer is noticed by its heartbeat (vqf/engine/sync.py): shards may
finish hours apart, far beyond the process group's own timeout (`engine.dist_timeout_s`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from vqf.config import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankSpec:
    rank: int
    world_size: int
    local_rank: int
    device: str


def pick_device(recipe: Recipe, local_rank: int) -> str:
    import torch

    want = recipe.engine.device
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        from vqf.errors import ConfigError

        raise ConfigError(
            "engine.device = 'cuda' but CUDA is not available", hint="use engine.device=cpu"
        )
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def run_job(recipe: Recipe, *, ranks: int = 1, status=None) -> list[dict[str, Any]]:
    """Runs the whole job from this process; returns the snapshot of each local rank.

    `status(snapshots)` is called on rank 0 every `engine.progress_every_s` with the latest
    snapshot of every rank.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        spec = RankSpec(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            device="",
        )
        return [_rank_main(spec, recipe, status)]
    if ranks <= 1:
        spec = RankSpec(rank=0, world_size=1, local_rank=0, device="")
        return [_rank_main(spec, recipe, status)]
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    procs = []
    for rank in range(ranks):
        spec = RankSpec(rank=rank, world_size=ranks, local_rank=rank, device="")
        p = ctx.Process(
            target=_spawned, args=(spec, recipe, results, status if rank == 0 else None)
        )
        p.start()
        procs.append(p)
    _forward_signals(procs)
    for p in procs:
        p.join()
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    stopped = {p.exitcode for p in procs} & {130, 143}
    if stopped:
        from vqf.errors import Stopped

        raise Stopped(
            "the ranks stopped on a signal; rerun the same command to resume",
            exit_code=max(stopped),
        )
    if failed:
        raise RuntimeError(
            f"ranks {failed} exited with an error; rerun to resume where they stopped"
        )
    return [results[r] for r in range(ranks)]


def _spawned(spec: RankSpec, recipe: Recipe, results, status) -> None:
    from vqf.logs import configure_logging

    # what torchrun would set: ranks of one node share its disk (the cache budget)
    os.environ.setdefault("LOCAL_RANK", str(spec.local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(spec.world_size))
    configure_logging()
    from vqf.errors import OutputFailed, Stopped, StuckThreads

    try:
        results[spec.rank] = _rank_main(spec, recipe, status)
    except (Stopped, OutputFailed, StuckThreads) as e:  # one line, as `vqf run` says it
        import sys

        print(f"vqf: rank {spec.rank}: {e}", file=sys.stderr)
        sys.stderr.flush()
        code = getattr(e, "exit_code", getattr(e, "EXIT_CODE", 1))
        os._exit(code)


def _rank_main(spec: RankSpec, recipe: Recipe, status) -> dict[str, Any]:
    from vqf.engine.rank import Rank

    device = pick_device(recipe, spec.local_rank)
    if device == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", spec.world_size))
        log.info("rank %d on the CPU: %d torch threads, %d rank(s) on this node share its cores",
                 spec.rank, share_cores(local_ranks=local), local)  # fmt: skip
    every_s = recipe.engine.progress_every_s
    group = (
        _ProgressGroup(
            spec,
            timeout_s=recipe.engine.dist_timeout_s,
            heartbeat_s=min(every_s, 10.0),
            dead_after_s=max(30.0, 10 * every_s),
        )
        if spec.world_size > 1
        else None
    )
    rank = Rank(recipe, rank=spec.rank, world_size=spec.world_size, device=device)
    _stop_on_signals(rank)
    reporter = _Reporter(rank.stats, group, status, every_s=every_s)
    reporter.start()
    try:
        snap = rank.run(group=group, local_leader=spec.local_rank == 0)
    finally:
        reporter.stop()
    if group is not None:
        group.publish(snap, final=True)
        group.barrier("the end of the job")
        if spec.rank == 0 and status is not None:
            status(group.collect(), final=True)
        group.close()
    elif status is not None:
        status([snap], final=True)
    return snap


def share_cores(*, local_ranks: int) -> int:
    """A CPU rank's share of the node's cores for torch's operator threads (its models and
    frame measures): without it every rank of a node, and every stage thread calling torch in
    it, would start one thread per core. OMP_NUM_THREADS, when set, decides instead."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // max(1, local_ranks))
    torch.set_num_threads(threads)
    return threads


def _stop_on_signals(rank) -> None:
    """SIGTERM (Kubernetes, Slurm, torchrun) and a first Ctrl-C stop the rank gracefully; a
    second Ctrl-C leaves at once. Neither is a crash: nothing in flight is charged."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and rank.stop_reason == "SIGINT":
            rank.exit_now(128 + signum)
        rank.request_stop(name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _forward_signals(procs) -> None:
    """The parent of spawned ranks passes a stop on to them as SIGTERM (a terminal's Ctrl-C
    reaches them by itself too: SIGTERM never counts as the second Ctrl-C)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def forward(signum, frame) -> None:
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)


class _ProgressGroup:
    """The ranks' meeting point: a gloo process group whose store carries progress, shared
    values and barriers (StoreSync: no deadline, heartbeats notice a dead peer).

    `timeout_s` is the process group's own timeout; nothing here waits on a collective."""

    def __init__(
        self,
        spec: RankSpec,
        *,
        timeout_s: float = 300.0,
        heartbeat_s: float = 5.0,
        dead_after_s: float = 60.0,
    ):
        from datetime import timedelta

        import torch.distributed as dist

        from vqf.engine.sync import StoreSync

        self.spec = spec
        if not dist.is_initialized():
            dist.init_process_group(
                "gloo",
                rank=spec.rank,
                world_size=spec.world_size,
                timeout=timedelta(seconds=timeout_s),
            )
        self.dist = dist
        from torch.distributed.distributed_c10d import _get_default_store

        self.store = _get_default_store()
        self.sync = StoreSync(
            self.store,
            rank=spec.rank,
            world_size=spec.world_size,
            heartbeat_s=heartbeat_s,
            dead_after_s=dead_after_s,
        ).start()

    def publish(self, snap: dict[str, Any], *, final: bool = False) -> None:
        import json

        snap = dict(snap, final=final)
        self.store.set(f"vqf/progress/{self.spec.rank}", json.dumps(snap, default=str))

    def collect(self) -> list[dict[str, Any]]:
        import json

        out = []
        for r in range(self.spec.world_size):
            key = f"vqf/progress/{r}"
            if self.store.check([key]):
                out.append(json.loads(self.store.get(key)))
        return out

    def share(self, key: str, make) -> str:
        """Rank 0 computes `make()` and publishes it; every other rank waits for it."""
        return self.sync.share(key, make)

    def barrier(self, name: str = "barrier") -> None:
        """Every rank meets here, however far apart they arrive (no deadline)."""
        self.sync.barrier(name)

    def close(self) -> None:
        self.sync.close()  # rank 0, which may host the store, leaves last
        self.dist.destroy_process_group()


class _Reporter:
    """Publishes this rank's progress; on rank 0 also calls `status` with every rank's."""

    def __init__(self, stats, group: _ProgressGroup | None, status, *, every_s: float):
        self.stats, self.group, self.status, self.every_s = stats, group, status, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vqf-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            snap = self.stats.snapshot()
            try:
                if self.group is not None:
                    self.group.publish(snap)
                    if self.status is not None and self.group.spec.rank == 0:
                        self.status(self.group.collect(), final=False)
                elif self.status is not None:
                    self.status([snap], final=False)
            except Exception as e:  # progress display must never stop the work
                log.debug("progress report failed: %s", e)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
