"""What joins the stages: bounded queues with an end marker, and the byte budget for frames.

Every stage reads its inbox until `END`, then passes `END` on. The budget counts the bytes of
decoded frames in flight (clip buffers being filled and clips waiting for the models), host
and device separately. Decode waits for room before each chunk, but only while the model
stage holds clips it will free: frames that only a decode can complete never wait on each
other, so the budget slows decode down and never deadlocks it.
"""

from __future__ import annotations

import queue
import threading

END = object()  # the end of a stage's input


def put(q: queue.Queue, item, *, alive=lambda: True, every_s: float = 0.2) -> bool:
    """`q.put(item)`, waking up every `every_s` to give up (False) once `alive()` is False."""
    while alive():
        try:
            q.put(item, timeout=every_s)
            return True
        except queue.Full:
            continue
    return False


class Budget:
    """Bytes of decoded frames in flight per pool ("host", "device"), with back-pressure."""

    def __init__(self, *, host_bytes: float, device_bytes: float):
        self.limits = {"host": float(host_bytes), "device": float(device_bytes)}
        self.used = {"host": 0.0, "device": 0.0}
        self.queued = {"host": 0.0, "device": 0.0}  # bytes the model stage will free
        self.peak = {"host": 0.0, "device": 0.0}
        self.waits = 0
        self._cond = threading.Condition()

    @staticmethod
    def pool_of(tensor) -> str:
        return "device" if getattr(tensor, "is_cuda", False) else "host"

    def hold(self, pool: str, n: float) -> None:
        with self._cond:
            self.used[pool] += n
            self.peak[pool] = max(self.peak[pool], self.used[pool])

    def hand_over(self, pool: str, n: float) -> None:
        """`n` held bytes now wait in the model stage, which will free them."""
        with self._cond:
            self.queued[pool] += n

    def free(self, pool: str, n: float, *, queued: bool = True) -> None:
        with self._cond:
            self.used[pool] -= n
            if queued:
                self.queued[pool] -= n
            self._cond.notify_all()

    def wait_room(self, pool: str, *, alive=lambda: True, every_s: float = 0.2) -> None:
        """Blocks while `pool` is over its limit and the model stage has bytes to free."""
        with self._cond:
            counted = False
            while alive() and self.used[pool] > self.limits[pool] and self.queued[pool] > 0:
                if not counted:
                    self.waits += 1
                    counted = True
                self._cond.wait(every_s)

    def snapshot(self) -> dict[str, float]:
        with self._cond:
            gb = 1024**3
            return {
                **{f"{p}_gb": round(self.used[p] / gb, 3) for p in self.used},
                **{f"{p}_peak_gb": round(self.peak[p] / gb, 3) for p in self.peak},
                "waits": self.waits,
            }
