"""`vqf soak`: thousands of tiny generated videos through the CPU route with tiny random models.

It checks what a long run would show: host memory (RSS) and open file descriptors stay flat,
the download cache ends empty, throughput does not decay. Videos are served by a loopback
http server so every one goes through the download cache (fetch, reserve, release). Prints a
table; exits 1 when the output lacks rows or the cache is not empty.

    vqf soak --n 2000
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DISTINCT = 8  # distinct encoded files; the rest are hard links under their own names


@dataclass
class Sample:
    t: float
    written: int
    rss_mb: float
    fds: int
    threads: int


@dataclass
class Sampler:
    """Samples this process's RSS, descriptors, threads and rows written every `every_s`."""

    stats: object
    every_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vqf-soak-sampler", daemon=True)

    def start(self) -> None:
        self.take()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.take()

    def take(self) -> None:
        written = self.stats.counters["rows_written"] if self.stats else 0
        self.samples.append(
            Sample(time.time(), written, rss_mb(), open_fds(), threading.active_count())
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.take()


def rss_mb() -> float:
    """Resident set size of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_corpus(folder: Path, *, n: int, seconds: float) -> list[str]:
    """`n` video file names under `folder`: DISTINCT encoded ones, the rest hard links."""
    from vqf.video.synth import make_video

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"v{i:06d}.mkv" if i % 2 else f"v{i:06d}.mp4"
        path = folder / name
        if i < DISTINCT:
            codec = "mjpeg" if i % 2 else "h264"
            make_video(path, codec=codec, width=32, height=32, seconds=seconds, fps=10, seed=i)
        else:
            os.link(folder / (f"v{i % DISTINCT:06d}" + path.suffix), path)
        names.append(name)
    return names


def serve(folder: Path) -> ThreadingHTTPServer:
    """A loopback http server for `folder`, quiet, in a daemon thread."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def soak_recipe(*, table: Path, outputs: Path, cache: Path, workers: int):
    from vqf.config import load_recipe

    demo = Path(__file__).resolve().parents[2] / "pipelines" / "demo.yaml"
    overrides = [
        f"tables={table}", f"outputs={outputs}", f"storage.cache_dir={cache}",
        "storage.cache_budget_gb=0.05", "demo.generate=false",
        "sampling.whole_frames=4", "sampling.window_frames=4",
        "sampling.height=32", "sampling.width=32",
        "filters.abnormal_region.enable=false", "filters.rov.enable=false",
        "filters.borders.enable=false", f"decode.workers={workers}", "decode.batch_size=4",
        "engine.device=cpu", "engine.clip_batch=16", "engine.writer_flush_rows=8",
    ]  # fmt: skip
    return load_recipe(demo, overrides=overrides)


def run_soak(*, n: int, workdir: Path, seconds: float = 0.5, workers: int = 2) -> dict:
    """Runs the soak in this process and returns its measurements."""
    from vqf.engine.rank import Rank

    videos = workdir / "videos"
    t0 = time.time()
    names = make_corpus(videos, n=n, seconds=seconds)
    made_s = time.time() - t0
    server = serve(videos)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    table = workdir / "input.jsonl"
    with table.open("w") as f:
        for i, name in enumerate(names):
            f.write(json.dumps({"video_id": f"soak{i:06d}", "video_path": f"{base}/{name}"}) + "\n")
    outputs, cache = workdir / "results", workdir / "cache"
    recipe = soak_recipe(table=table, outputs=outputs, cache=cache, workers=workers)
    rank = Rank(recipe, rank=0, world_size=1, device="cpu")
    sampler = Sampler(rank.stats)
    sampler.start()
    try:
        snap = rank.run()
    finally:
        sampler.stop()
        server.shutdown()
        server.server_close()
    rows = sum(len(p.read_text().splitlines()) for p in outputs.glob("part-*.jsonl"))
    left = sorted(p.name for p in cache.glob("*")) if cache.exists() else []
    return {
        "n": n,
        "made_s": made_s,
        "rows": rows,
        "succeeded": snap["counters"].get("succeeded", 0),
        "failures": snap["failures"],
        "cache_left": left,
        "samples": sampler.samples,
    }


def tenths(samples: list[Sample], n: int) -> list[float]:
    """Videos per second over each tenth of the rows."""
    rates, prev_t, prev_w = [], samples[0].t, 0
    for k in range(1, 11):
        goal = k * n / 10
        hit = next((s for s in samples if s.written >= goal), samples[-1])
        span = max(hit.t - prev_t, 1e-6)
        rates.append((hit.written - prev_w) / span)
        prev_t, prev_w = hit.t, hit.written
    return rates


def report(result: dict) -> str:
    samples: list[Sample] = result["samples"]
    n = result["n"]
    # "start" is the first sample after the models are loaded and rows flow
    flowing = [s for s in samples if s.written > 0] or samples
    start, end = flowing[0], samples[-1]
    middle = next((s for s in samples if s.written >= n / 2), end)
    late = next((s for s in samples if s.written >= 0.9 * n), end)
    elapsed = end.t - samples[0].t
    lines = [
        f"vqf soak: {n} videos ({result['made_s']:.1f}s to generate), "
        f"{result['rows']} rows, {result['succeeded']} succeeded, failures {result['failures'] or 'none'}",
        f"wall {elapsed:.1f}s, {end.written / max(elapsed, 1e-6):.2f} videos/s overall",
        "",
        f"{'point':<8}{'rows':>8}{'RSS MiB':>10}{'open fds':>10}{'threads':>9}",
    ]
    # "after" is taken once run() returned: the rank's threads and files are gone by then
    for label, s in (("start", start), ("middle", middle), ("end", late), ("after", end)):
        lines.append(f"{label:<8}{s.written:>8}{s.rss_mb:>10.1f}{s.fds:>10}{s.threads:>9}")
    lines += ["", "videos/s per tenth of the rows:"]
    lines.append("  " + "  ".join(f"{r:.2f}" for r in tenths(samples, n)))
    lines.append(
        f"cache dir at the end: {'empty' if not result['cache_left'] else result['cache_left']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vqf soak", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="videos (default 2000)")
    p.add_argument("--seconds", type=float, default=0.5, help="length of each video")
    p.add_argument("--workers", type=int, default=2, help="fetch+probe threads")
    p.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="vqf-soak-"))
    try:
        result = run_soak(n=args.n, workdir=workdir, seconds=args.seconds, workers=args.workers)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(result))
    ok = result["rows"] == args.n and not result["cache_left"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
