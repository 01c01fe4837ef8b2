"""Ranks meet through the store with no deadline; a dead or hung peer is still noticed."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import threading
import time

import pytest
import torch.distributed as dist

from vqf.engine.launch import RankSpec, _free_port, _ProgressGroup
from vqf.engine.sync import PeerLost, StoreSync


def ranks(n: int, **options) -> list[StoreSync]:
    """n ranks of one in-process store (each with its own heartbeat thread)."""
    store = dist.HashStore()
    options = {"heartbeat_s": 0.05, "dead_after_s": 0.5, "poll_s": 0.02, **options}
    return [StoreSync(store, rank=r, world_size=n, **options).start() for r in range(n)]


def in_thread(fn) -> dict:
    """Runs fn on a thread; the dict gets its result or error once `thread` is joined."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def test_a_late_peer_is_waited_for_as_long_as_it_beats():
    fast, slow = ranks(2)
    waiting = in_thread(lambda: fast.barrier("the end"))
    time.sleep(1.5)  # three times dead_after_s: only the heartbeat keeps the peer alive
    assert waiting["thread"].is_alive()
    slow.barrier("the end")
    waiting["thread"].join(5)
    assert "error" not in waiting and not waiting["thread"].is_alive()
    # the second barrier is a new one: the first one's keys do not let anyone through
    waiting = in_thread(lambda: slow.barrier("again"))
    time.sleep(0.2)
    assert waiting["thread"].is_alive()
    fast.barrier("again")
    waiting["thread"].join(5)
    assert "error" not in waiting
    for r in (fast, slow):
        r.stop_heartbeat()


def test_a_peer_whose_heartbeat_stops_fails_the_wait():
    waiter, hung = ranks(2)
    hung.stop_heartbeat()  # alive, same pid as ours, but stuck
    start = time.monotonic()
    with pytest.raises(PeerLost, match=r"rank 1 on .* sent no heartbeat .* waits at checkpoints"):
        waiter.barrier("checkpoints")
    assert time.monotonic() - start < 5
    waiter.stop_heartbeat()


def test_a_peer_whose_process_is_gone_fails_the_wait_at_once():
    waiter, gone = ranks(2, dead_after_s=60.0)
    gone.stop_heartbeat()
    child = subprocess.Popen(["true"])
    child.wait()
    here = socket.gethostname()
    gone.store.set("vqf/peer/1", json.dumps({"host": here, "pid": child.pid}))
    start = time.monotonic()
    with pytest.raises(PeerLost, match=f"rank 1 \\(pid {child.pid} on this host\\) is gone"):
        waiter.barrier()
    waiter.stop_heartbeat()
    waiter.store.set("vqf/peer/0", json.dumps({"host": here, "pid": child.pid}))
    with pytest.raises(PeerLost, match="rank 0 .* is gone while rank 1 waits at the value"):
        gone.share("sink", lambda: "made by rank 0 only")
    assert time.monotonic() - start < 5  # not the 60 s of dead_after_s


def test_rank_zero_shares_a_value_the_others_wait_for():
    zero, one = ranks(2)
    got = in_thread(lambda: one.share("session", lambda: "never called on rank 1"))
    time.sleep(0.2)
    assert zero.share("session", lambda: "sess-42") == "sess-42"
    got["thread"].join(5)
    assert got["value"] == "sess-42"
    closing = in_thread(zero.close)  # rank 0 leaves last
    time.sleep(0.2)
    assert closing["thread"].is_alive()
    one.close()
    closing["thread"].join(5)
    assert not closing["thread"].is_alive()


# -- two real ranks: gloo with a 2 s process-group timeout, shards finishing 6 s apart -------


def _rank_body(rank: int, port: int, start, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    start.wait()  # both processes have imported torch: the rendezvous itself is quick
    spec = RankSpec(rank=rank, world_size=2, local_rank=rank, device="cpu")
    out: dict = {}
    try:
        group = _ProgressGroup(spec, timeout_s=2.0, heartbeat_s=0.2, dead_after_s=3.0)
        if rank == 0:
            began = time.monotonic()
            try:
                group.store.get("vqf/never-set")  # a blocking store call still has 2 s
            except Exception as e:
                out["blocking_get"] = (type(e).__name__, time.monotonic() - began)
        if rank == 1:
            time.sleep(6.0)  # a long shard: three times the process group's timeout
        began = time.monotonic()
        group.barrier("the end of the job")
        out["waited_s"] = time.monotonic() - began
        if rank == 1:
            os._exit(0)  # dies before the next barrier
        try:
            group.barrier("after the end")
        except PeerLost as e:
            out["lost"] = str(e)
        dist.destroy_process_group()
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
    results.put((rank, out))


def test_two_ranks_meet_far_past_the_process_group_timeout_and_notice_a_dead_peer():
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_body, args=(r, port, start, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=120) for _ in range(1))
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    zero = got[0]
    assert "error" not in zero, zero
    name, seconds = zero["blocking_get"]
    assert seconds < 10, "the process group's timeout is the small one asked for"
    assert zero["waited_s"] > 4.0  # waited for rank 1 well past the 2 s timeout
    assert "rank 1 (pid" in zero["lost"] and "is gone" in zero["lost"]
