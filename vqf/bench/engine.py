"""`vqf bench-engine`: the streaming engine's scheduling and memory, measured.

`scheduler`: the real rank over generated videos, with the decode and model stages replaced
by stand-ins of fixed cost that release the GIL (as NVDEC and a GPU do): each video's decode
sleeps `--decode-ms` in total (spread over its chunks), each video's clips cost `--model-ms`
in total in the backbone. Prints videos/s against 1 / max(stage cost), the most a pipeline
can give, and 1 / sum(stage costs), what a serial loop gets.

`memory`: time and peak RSS of `vqf run` (a child process each, read from its rusage) on
generated 640x360 videos of the given lengths (1, 10 and 30 minutes by default), H.264 (the
pyav route on a CPU) and VP9 (DALI's CPU decoder: a DALI route measured without a GPU), at
the given clip size; prints seconds and CPU seconds per minute of video (the run's start-up,
measured on a 5-second video, taken off) and peak RSS, each against the shortest video of its
codec: both should stay flat (goals: 1.15x for time, 1.3x for RSS). It also prints the seconds
each added minute costs between consecutive lengths, where start-up cancels out: the steadier
figure for time, since a short run's start-up varies by seconds on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


CODEC_OPTIONS = {
    # a bench video need not look good: fast encoders, the decoders' cost is what is measured
    "h264": {"preset": "ultrafast", "crf": "28"},
    "vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "0"},
}
SUFFIX = {"h264": "mp4", "vp9": "webm"}
START_MIN = 5 / 60  # the video whose run measures start-up: 5 seconds
START_RUNS = 3


def run_child(video: Path, *, workdir: Path, size: int) -> dict:
    """One `vqf run` child judging one video at `size` x `size` clips: its wall seconds, CPU
    seconds (user + system, every thread) and peak RSS (GiB), read from its rusage."""
    table = workdir / f"{video.stem}.jsonl"
    table.write_text(json.dumps({"video_id": video.stem, "video_path": str(video)}) + "\n")
    out = workdir / f"out-{video.stem}-{time.time_ns()}"
    cmd = [
        sys.executable, "-m", "vqf", "run", str(ROOT / "pipelines" / "demo.yaml"),
        "--tables", str(table), "--outputs", str(out), "--dashboard", "plain",
        "--set", "demo.generate=false", "--set", f"sampling.height={size}",
        "--set", f"sampling.width={size}",
    ]  # fmt: skip
    # a wrapper process per run: its children's rusage is this run's alone
    wrapper = (
        "import json, resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print(json.dumps([u.ru_maxrss, u.ru_utime + u.ru_stime])); sys.exit(rc)"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    maxrss, cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for f in out.glob("part-*.jsonl") for line in f.open()]
    ok = [r for r in rows if json.loads(r["result_info"]).get("succeed") == "true"]
    if len(ok) != 1:
        raise RuntimeError(f"{video.name}: the run wrote no successful row: {rows}")
    info = json.loads(ok[0]["result_info"])
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "peak_rss_gib": maxrss / 1024**2,  # ru_maxrss is in KiB on Linux
        "route": info.get("decode_route", "?"),
        "frames_planned": info.get("frames_planned", 0),
    }


def bench_video(codec: str, minutes: float, *, workdir: Path) -> Path:
    """A 640x360 30 fps video of `minutes` in `codec`, generated once into `workdir`."""
    from vqf.video.synth import make_video

    path = workdir / f"long_{codec}_{minutes:g}min.{SUFFIX[codec]}"
    if not path.exists():
        started = time.perf_counter()
        make_video(path, codec=codec, width=640, height=360, seconds=60 * minutes, fps=30,
                   options=CODEC_OPTIONS[codec])  # fmt: skip
        print(f"generated {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def memory(*, minutes: list[float], codecs: list[str], size: int, workdir: Path) -> list[dict]:
    """Time and peak RSS of `vqf run` per video length and codec. A run's start-up (imports,
    models, pipelines) is measured on a 5-second video of the same codec and taken off, so
    seconds per minute of video say what each minute costs (`net_*`): the difference of the
    two runs is the work of the minutes the longer video has over the 5-second one. The
    start-up is the median of `START_RUNS` runs: one slow start would skew every figure."""
    results = []
    for codec in codecs:
        short = bench_video(codec, START_MIN, workdir=workdir)
        runs = [run_child(short, workdir=workdir, size=size) for _ in range(START_RUNS)]
        start = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "cpu_s")}
        each = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        print(f"{codec}: start-up {start['seconds']:.1f} s, {start['cpu_s']:.1f} CPU s "
              f"(a 5 s video, the median of {START_RUNS} runs: {each} s)", flush=True)  # fmt: skip
        for m in minutes:
            r = run_child(bench_video(codec, m, workdir=workdir), workdir=workdir, size=size)
            r.update(codec=codec, minutes=m)
            r["net_s_per_min"] = max(r["seconds"] - start["seconds"], 0.0) / (m - START_MIN)
            r["net_cpu_per_min"] = max(r["cpu_s"] - start["cpu_s"], 0.0) / (m - START_MIN)
            results.append(r)
            print(f"{m:g} min 640x360 {codec} ({r['route']}, {r['frames_planned']} frames planned) "
                  f"at {size}x{size} clips: {r['seconds']:.0f} s, {r['net_s_per_min']:.2f} s and "
                  f"{r['net_cpu_per_min']:.2f} CPU s per minute of video; peak RSS "
                  f"{r['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
    return results


def memory_summary(results: list[dict]) -> list[str]:
    """Each length against the shortest of its codec: time per minute (goal: flat within
    1.15x) and peak RSS (goal: flat within 1.3x)."""
    lines = []
    for codec in dict.fromkeys(r["codec"] for r in results):
        mine = sorted((r for r in results if r["codec"] == codec), key=lambda r: r["minutes"])
        base = mine[0]
        for r in mine:
            time_ratio = _ratio(r["net_s_per_min"], base["net_s_per_min"])
            cpu_ratio = _ratio(r["net_cpu_per_min"], base["net_cpu_per_min"])
            rss_ratio = r["peak_rss_gib"] / base["peak_rss_gib"]
            lines.append(
                f"{codec} {r['minutes']:g} min: {r['net_s_per_min']:.2f} s/min = {time_ratio}, "
                f"{r['net_cpu_per_min']:.2f} CPU s/min = {cpu_ratio}, peak RSS "
                f"{r['peak_rss_gib']:.2f} GiB = {rss_ratio:.2f}x the {base['minutes']:g} min run"
            )
        lines += marginal(mine)
    return lines


def marginal(runs: list[dict]) -> list[str]:
    """Seconds per minute between consecutive lengths of one codec: the difference of two runs,
    where start-up cancels out. A cost that grows with length shows as a rising slope."""
    slopes = [
        (a, b, (b["seconds"] - a["seconds"]) / (b["minutes"] - a["minutes"]))
        for a, b in zip(runs, runs[1:])
    ]
    if not slopes:
        return []
    first = slopes[0][2]
    return [
        f"{b['codec']} {a['minutes']:g} -> {b['minutes']:g} min: {slope:.2f} s per added minute"
        + (f" = {_ratio(slope, first)} the first step" if k else "")
        for k, (a, b, slope) in enumerate(slopes)
    ]


def _ratio(value: float, base: float) -> str:
    """`value / base` as "1.07x"; "n/a" when the base is lost in the start-up's noise (a
    shared machine can make a short run finish faster than the start-up run did)."""
    return (
        f"{value / base:.2f}x"
        if base > 0
        else "n/a (the shortest run was within the start-up's noise)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vqf bench-engine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scheduler", help="throughput with fixed-cost stand-in stages")
    s.add_argument("--videos", type=int, default=24)
    s.add_argument("--decode-ms", type=float, default=200.0)
    s.add_argument("--model-ms", type=float, default=150.0)
    s.add_argument("--lanes", type=int, default=1)
    m = sub.add_parser("memory", help="time and peak RSS of vqf run on long videos")
    m.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 30.0])
    m.add_argument("--codecs", nargs="+", default=["h264", "vp9"], choices=sorted(SUFFIX))
    m.add_argument("--size", type=int, default=256)
    for q in (s, m):
        q.add_argument("--dir", default=None, help="where videos are generated (kept)")
    args = p.parse_args(argv)
    if args.what == "memory" and min(args.minutes) <= START_MIN:
        p.error(f"--minutes must be longer than the {START_MIN * 60:g} s start-up video")
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
    results = memory(minutes=args.minutes, codecs=args.codecs, size=args.size, workdir=workdir)
    print("\n".join(memory_summary(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
