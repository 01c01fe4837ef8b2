"""Barriers and shared values over the torch.distributed store, with no overall deadline.

Shards finish hours apart, so a rank waiting for its peers never gives up by the clock (gloo's
collectives would, after the process group's timeout). It polls the store for the keys it
waits on, and a dead peer is noticed instead through the heartbeats every rank publishes:

- each rank bumps a counter in the store every `heartbeat_s` from a thread of its own;
- a waiter watches the counters of the peers it still waits for, on its own clock (so clocks
  of different hosts never matter), and fails when one has not moved for `dead_after_s`;
- a peer on the same host whose process is gone fails the wait at once.

Barriers are numbered: every rank calls them in the same order, so the n-th barrier of one
rank meets the n-th of every other. `close()` lets rank 0 leave last: under `vqf run --gpus N`
it hosts the store, and a peer still reading it must not lose it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from vqf.storage.cache import pid_alive

log = logging.getLogger(__name__)


class PeerLost(RuntimeError):
    """A peer this rank waits for is gone or hung; the job cannot finish as one."""


class StoreSync:
    """One rank's side of barriers and shared values on a store (TCPStore, HashStore...)."""

    def __init__(
        self,
        store,
        *,
        rank: int,
        world_size: int,
        heartbeat_s: float = 5.0,
        dead_after_s: float = 60.0,
        poll_s: float = 0.2,
        prefix: str = "vqf",
    ):
        if dead_after_s <= heartbeat_s:
            raise ValueError(f"dead_after_s {dead_after_s} must exceed heartbeat_s {heartbeat_s}")
        self.store, self.rank, self.world_size = store, rank, world_size
        self.heartbeat_s, self.dead_after_s, self.poll_s = heartbeat_s, dead_after_s, poll_s
        self.prefix = prefix
        self._generation = 0
        self._peers: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- heartbeats --------------------------------------------------------------------------
    def start(self) -> StoreSync:
        """Publishes who this rank is and starts its heartbeat."""
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        self.store.set(self._key("peer", self.rank), json.dumps(me))
        self.store.add(self._key("heartbeat", self.rank), 1)
        self._thread = threading.Thread(target=self._beat, name="vqf-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.store.add(self._key("heartbeat", self.rank), 1)
            except Exception as e:  # the store may go first at the very end
                log.debug("heartbeat failed: %s", e)

    # -- waiting -----------------------------------------------------------------------------
    def barrier(self, name: str = "barrier") -> None:
        """Returns when every rank reached this (n-th) barrier, however long that takes."""
        self._generation += 1
        where = f"barrier/{self._generation}"
        self.store.set(self._key(where, self.rank), "1")
        self.wait_for(
            {self._key(where, r): r for r in range(self.world_size) if r != self.rank},
            what=f"{name} (barrier {self._generation})",
        )

    def share(self, key: str, make: Callable[[], str]) -> str:
        """Rank 0 computes `make()` and publishes it; every other rank waits for it."""
        key = self._key("shared", key)
        if self.rank == 0:
            value = make() or ""
            self.store.set(key, value)
            return value
        self.wait_for({key: 0}, what=f"the value {key!r} from rank 0")
        return self.store.get(key).decode()

    def wait_for(self, keys: dict[str, int], *, what: str) -> None:
        """Waits until every key (set by the rank it maps to) is in the store; PeerLost when
        a rank still owing its key stops beating or its process is gone."""
        seen: dict[int, tuple[int, float]] = {}  # rank -> (heartbeat count, when it moved)
        next_check = 0.0
        while not self.store.check(list(keys)):
            now = time.monotonic()
            if now >= next_check:
                owing = {r for k, r in keys.items() if not self.store.check([k])}
                for peer in sorted(owing):
                    self._check_alive(peer, seen, now=now, what=what)
                next_check = now + min(self.heartbeat_s, 1.0)
            time.sleep(self.poll_s)

    def _check_alive(self, peer: int, seen: dict, *, now: float, what: str) -> None:
        info = self._peer(peer)
        if info and info["host"] == socket.gethostname() and not pid_alive(int(info["pid"])):
            raise PeerLost(
                f"rank {peer} (pid {info['pid']} on this host) is gone while rank "
                f"{self.rank} waits at {what}; rerun to resume where the ranks stopped"
            )
        beats = self.store.add(self._key("heartbeat", peer), 0)
        if peer not in seen or seen[peer][0] != beats:
            seen[peer] = (beats, now)
        elif now - seen[peer][1] > self.dead_after_s:
            where = f" on {info['host']}" if info else ""
            raise PeerLost(
                f"rank {peer}{where} sent no heartbeat for {now - seen[peer][1]:.0f} s while "
                f"rank {self.rank} waits at {what}: it is hung or gone; rerun to resume"
            )

    def _peer(self, peer: int) -> dict | None:
        if peer not in self._peers:
            key = self._key("peer", peer)
            if not self.store.check([key]):
                return None
            self._peers[peer] = json.loads(self.store.get(key))
        return self._peers[peer]

    # -- the end -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the heartbeat; rank 0 first waits until every peer is done with the store."""
        try:
            self.store.set(self._key("closed", self.rank), "1")
            if self.rank == 0:
                self.wait_for(
                    {self._key("closed", r): r for r in range(1, self.world_size)},
                    what="the end of the job",
                )
        except PeerLost as e:  # every rank passed the last barrier: losing one costs nothing
            log.warning("%s", e)
        finally:
            self.stop_heartbeat()

    def _key(self, what: str, rank: int | str) -> str:
        return f"{self.prefix}/{what}/{rank}"
