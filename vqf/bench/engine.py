"""`vqf bench-engine`: the streaming engine's scheduling and memory, measured.

`scheduler`: the real rank over generated videos, with the decode and model stages replaced
by stand-ins of fixed cost that release the GIL (as NVDEC and a GPU do): each video's decode
sleeps `--decode-ms` in total (spread over its chunks), each video's clips cost `--model-ms`
in total in the backbone. Prints videos/s against 1 / max(stage cost), the most a pipeline
can give, and 1 / sum(stage costs), what a serial loop gets.

`memory`: peak RSS of `vqf run` (a child process each, read from its rusage) on generated
640x360 H.264 videos of the given lengths at the given clip size; prints each and the ratio
to the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def scheduler(*, videos: int, decode_ms: float, model_ms: float, lanes: int, workdir: Path) -> dict:
    """Runs the stand-in stages through a real Rank; returns the measured and ideal rates."""
    import vqf.video.plane as plane_module
    from vqf.config import load_recipe
    from vqf.engine.rank import Rank
    from vqf.models.bank import ModelBank
    from vqf.video.synth import make_video

    rows = []
    for i in range(videos):
        path = workdir / f"v{i}.webm"
        if not path.exists():
            make_video(path, codec="vp9", width=64, height=48, seconds=4, fps=10, seed=i % 4)
        rows.append({"video_id": f"v{i}", "video_path": str(path)})
    table = workdir / "in.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = workdir / f"out-{time.time_ns()}"
    recipe = load_recipe(ROOT / "pipelines" / "demo.yaml", overrides=[
        f"tables={table}", f"outputs={out}", "demo.generate=false",
        "filters.abnormal_region.enable=false", "filters.borders.enable=false",
        "filters.rov.enable=false", "filters.motion.enable=false",
        "filters.sharpness.enable=false", "filters.exposure.enable=false",
        "filters.cuts.enable=false", "filters.simcam.enable=false",
        "filters.low_quality.enable=false", f"decode.pipelines={lanes}",
        "decode.chunk_frames=8", "sampling.height=32", "sampling.width=32",
    ])  # fmt: skip
    clips_per_video = 1  # vfx reads the whole clip only
    real_stream, real_backbone = plane_module.VideoPlane.stream, ModelBank.backbone

    def stream(self, prepared, **kwargs):
        chunks = -(-len(prepared.plan.frames) // recipe.decode.chunk_frames)
        for chunk in real_stream(self, prepared, **kwargs):
            time.sleep(decode_ms / 1000 / chunks)
            yield chunk

    class Fixed:
        def __init__(self, inner):
            self.inner = inner

        def encode(self, clips):
            time.sleep(model_ms / 1000 * clips.shape[0] / clips_per_video)
            return self.inner.encode(clips)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    plane_module.VideoPlane.stream = stream
    ModelBank.backbone = lambda self, name: Fixed(real_backbone(self, name))
    try:
        rank = Rank(recipe, rank=0, world_size=1, device="cpu")
        rank.stats.keep_spans = True
        snap = rank.run()
    finally:
        plane_module.VideoPlane.stream, ModelBank.backbone = real_stream, real_backbone
    spans = rank.stats.spans
    first = min(s[2] for s in spans if s[0] == "fetch")
    last = max(s[3] for s in spans if s[0] == "write")
    done = snap["counters"].get("succeeded", 0)
    rate = done / (last - first)
    # each stage's measured cost per video: the stand-in's sleep plus the real work around it
    decode_s = snap["stage_seconds"].get("decode", 0.0) / max(done, 1) / lanes
    model_s = snap["stage_seconds"].get("model", 0.0) / max(done, 1)
    return {
        "videos": videos,
        "succeeded": done,
        "videos_per_s": rate,
        "decode_s": decode_s,
        "model_s": model_s,
        "pipeline_bound": 1 / max(decode_s, model_s),
        "serial_bound": 1 / (decode_s * lanes + model_s),
    }


def peak_rss_of_run(video: Path, *, workdir: Path, size: int) -> float:
    """Peak RSS (GiB) of a `vqf run` child judging one video at `size` x `size` clips."""
    table = workdir / f"{video.stem}.jsonl"
    table.write_text(json.dumps({"video_id": video.stem, "video_path": str(video)}) + "\n")
    out = workdir / f"out-{video.stem}-{time.time_ns()}"
    cmd = [
        sys.executable, "-m", "vqf", "run", str(ROOT / "pipelines" / "demo.yaml"),
        "--tables", str(table), "--outputs", str(out),
        "--set", "demo.generate=false", "--set", f"sampling.height={size}",
        "--set", f"sampling.width={size}",
    ]  # fmt: skip
    # a wrapper process per run: its children's ru_maxrss is this run's peak alone
    wrapper = (
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return int(proc.stdout.strip().splitlines()[-1]) / 1024**2  # ru_maxrss is in KiB on Linux


def memory(*, minutes: list[float], size: int, workdir: Path) -> list[dict]:
    from vqf.video.synth import make_video

    results = []
    for m in minutes:
        path = workdir / f"long_{m:g}min.mp4"
        if not path.exists():
            started = time.perf_counter()
            make_video(path, codec="h264", width=640, height=360, seconds=60 * m, fps=30,
                       options={"preset": "ultrafast", "crf": "28"})  # fmt: skip
            print(f"generated {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        rss = peak_rss_of_run(path, workdir=workdir, size=size)
        results.append(
            {"minutes": m, "peak_rss_gib": rss, "seconds": time.perf_counter() - started}
        )
        print(f"{m:g} min 640x360 H.264 at {size}x{size} clips: peak RSS {rss:.2f} GiB "
              f"({results[-1]['seconds']:.0f} s)", flush=True)  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vqf bench-engine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scheduler", help="throughput with fixed-cost stand-in stages")
    s.add_argument("--videos", type=int, default=24)
    s.add_argument("--decode-ms", type=float, default=200.0)
    s.add_argument("--model-ms", type=float, default=150.0)
    s.add_argument("--lanes", type=int, default=1)
    m = sub.add_parser("memory", help="peak RSS of vqf run on long videos")
    m.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    m.add_argument("--size", type=int, default=256)
    for q in (s, m):
        q.add_argument("--dir", default=None, help="where videos are generated (kept)")
    args = p.parse_args(argv)
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="vqf-bench-engine-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.what == "scheduler":
        r = scheduler(videos=args.videos, decode_ms=args.decode_ms, model_ms=args.model_ms,
                      lanes=args.lanes, workdir=workdir)  # fmt: skip
        print(
            f"stage cost per video (measured): decode {r['decode_s'] * 1000:.0f} ms "
            f"(stand-in {args.decode_ms:g} ms / {args.lanes} lane(s)), models "
            f"{r['model_s'] * 1000:.0f} ms (stand-in {args.model_ms:g} ms)"
        )
        print(
            f"scheduler: {r['succeeded']}/{r['videos']} videos, {r['videos_per_s']:.2f} videos/s; "
            f"pipeline bound 1/max(stage) = {r['pipeline_bound']:.2f} "
            f"({r['videos_per_s'] / r['pipeline_bound']:.0%} of it); "
            f"serial loop 1/sum(stages) = {r['serial_bound']:.2f}"
        )
        return 0
    results = memory(minutes=args.minutes, size=args.size, workdir=workdir)
    base = results[0]["peak_rss_gib"]
    for r in results:
        print(f"{r['minutes']:g} min: {r['peak_rss_gib']:.2f} GiB = {r['peak_rss_gib'] / base:.2f}x "
              f"the {results[0]['minutes']:g} min run")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
