"""`vqf bench-video`: the video plane against a plain PyAV decode of the same file.

Generates a 720p H.264 video (20 s by default; `--video FILE` measures a file of your own
instead), then prints side by side: how many frames
the plan decodes per frame its clips read (decode-once), seconds per video through the plane
(probe + plan, then the chunked decode + rotate + resize + normalise in the graph), and the
practical CPU floor: PyAV decoding the spanned frames with swscale converting and scaling only
the planned ones straight to the clip size (`frame.reformat`), with their ratio (wall and CPU
seconds: the CPU figure holds when other work shares the machine), and how far the plane's
pixels lie from an antialiased resize of the full-size frames (`--prescale` compares choices).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vqf.config import DecodeConfig

TARGET_RATIO = 1.5


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from vqf.config import Recipe
    from vqf.video.synth import make_video

    if args.video:
        path = Path(args.video)
        if not path.is_file():
            print(f"vqf bench-video: --video {args.video} is not a file")
            return 2
    else:
        workdir = Path(args.dir or tempfile.mkdtemp(prefix="vqf-bench-"))
        path = workdir / f"bench_{args.width}x{args.height}_{args.seconds:g}s.mp4"
    if not path.exists():
        started = time.perf_counter()
        make_video(
            path,
            codec="h264",
            width=args.width,
            height=args.height,
            seconds=args.seconds,
            fps=args.fps,
            gop=args.gop,
            options={"preset": "ultrafast", "crf": "23"},
        )
        print(f"generated {path} in {time.perf_counter() - started:.1f} s")
    route = "auto" if args.route == "auto" else args.route
    decode = DecodeConfig(
        route=route, batch_size=1, chunk_frames=args.chunk, prescale=args.prescale
    )
    recipe = Recipe(decode=decode)
    report = run(path, recipe=recipe, device=args.device, repeat=args.repeat)
    print(format_report(report))
    return 0


def run(path: Path, *, recipe, device: str, repeat: int) -> dict:
    """Times the plane and the plain decode `repeat` times each and keeps the best of each,
    in wall seconds and in CPU seconds of this process (every thread: FFmpeg's, DALI's), the
    steadier figure on a machine other work shares. The plane streams its chunks and lets
    each go, as the engine does."""
    from vqf.video.plane import VideoPlane

    plane = VideoPlane(recipe=recipe, device=device)
    prepared = plane.prepare(path, uri=str(path))
    _stream(plane, prepared)  # builds the pipelines: not part of a video's cost
    plane_s, plane_cpu, prepare_s, plain_s, plain_cpu = [], [], [], [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        prepared = plane.prepare(path, uri=str(path))
        prepare_s.append(time.perf_counter() - started)
        shape = _stream(plane, prepared)
        plane_s.append(time.perf_counter() - started)
        plane_cpu.append(time.process_time() - cpu)
        cpu = time.process_time()
        plain_s.append(
            floor_seconds(
                path,
                prepared.plan.frames,
                width=recipe.sampling.width,
                height=recipe.sampling.height,
            )
        )
        plain_cpu.append(time.process_time() - cpu)
    mean, p99 = accuracy(plane, prepared)
    plane.close()
    plan, info = prepared.plan, prepared.info
    return {
        "file": str(path),
        "video": f"{info.codec} {info.width}x{info.height} {info.frame_count} frames "
        f"{info.duration_s:.1f} s",
        "route": prepared.route,
        "device": device,
        "prescale": recipe.decode.prescale,
        "frames_needed": plan.frames_needed,
        "frames_union": len(plan.frames),
        "frames_stream": int(plan.frames[-1]) + 1,
        "prepare_s": min(prepare_s),
        "plane_s": min(plane_s),
        "plain_s": min(plain_s),
        "plane_cpu_s": min(plane_cpu),
        "plain_cpu_s": min(plain_cpu),
        "output": shape,
        "error_mean": mean,
        "error_p99": p99,
    }


def _stream(plane, prepared) -> tuple[int, ...]:
    """Every chunk of the plan through the plane; the shape of all of them together."""
    n, shape = 0, ()
    for chunk in plane.stream(prepared):
        _synchronise(chunk.frames)
        n, shape = n + chunk.frames.shape[0], tuple(chunk.frames.shape[1:])
    return (n, *shape)


def accuracy(plane, prepared, *, frames: int = 24) -> tuple[float, float]:
    """Mean and 99th percentile of |plane - reference| in 0..255 levels over `frames` planned
    frames spread over the video, the reference being an antialiased bilinear resize (torch)
    of PyAV's full-size RGB frames, cropped to nothing and turned upright as the plane does:
    how far the route's shortcuts (swscale's shrink, its interpolation) move the pixels."""
    import dataclasses

    import numpy as np
    import torch
    import torch.nn.functional as F

    from vqf.video.pyav_route import iter_frames

    plan = prepared.plan
    keep = np.unique(np.linspace(0, len(plan.frames) - 1, frames).round().astype(np.int64))
    subset = dataclasses.replace(plan, frames=plan.frames[keep])
    got = torch.cat([c.frames.float().cpu() for c in plane.stream(
        dataclasses.replace(prepared, plan=subset))])  # fmt: skip
    s = plane.recipe.sampling
    mean = torch.tensor(s.mean).view(1, 3, 1, 1)
    std = torch.tensor(s.std).view(1, 3, 1, 1)
    got = (got * std + mean) * 255
    (full,) = list(iter_frames(prepared.path, subset.frames, chunk=len(subset.frames)))
    turns = prepared.info.rotation // 90
    want = torch.from_numpy(np.ascontiguousarray(np.rot90(full, turns, axes=(1, 2))))
    want = want.permute(0, 3, 1, 2).float()
    want = F.interpolate(want, size=(s.height, s.width), mode="bilinear", antialias=True)
    diff = (got - want).abs()[..., 1:-1, 1:-1]  # the edge pixels see outside the frame
    return diff.mean().item(), diff.flatten().quantile(0.99).item()


def floor_seconds(path: Path, frames, *, width: int, height: int) -> float:
    """PyAV decoding `path` up to the last planned frame (same threading as the plane), with
    swscale converting only the planned `frames` to RGB at the clip size: the CPU floor."""
    import av

    wanted = set(int(i) for i in frames)
    last = max(wanted)
    started = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
            if index >= last:
                break
    return time.perf_counter() - started


def format_report(r: dict) -> str:
    ratio = r["plane_s"] / r["plain_s"]
    cpu_ratio = r["plane_cpu_s"] / r["plain_cpu_s"]
    verdict = "within" if cpu_ratio <= TARGET_RATIO else "over"
    return "\n".join(
        [
            f"video             {r['video']} ({r['file']})",
            f"route             {r['route']} on {r['device']} (decode.prescale {r['prescale']:g}), "
            f"output {r['output']}",
            f"decode-once       {r['frames_union']} distinct frames for {r['frames_needed']} "
            f"frames read by the clips: {r['frames_union'] / r['frames_needed']:.2f} decoded "
            f"per frame needed (the stream is decoded up to frame {r['frames_stream']}: "
            f"{r['frames_stream'] / r['frames_needed']:.2f})",
            f"plane             {r['plane_s']:.2f} s per video, {r['plane_cpu_s']:.2f} CPU s "
            f"(probe+plan {r['prepare_s']:.2f} s, decode+graph {r['plane_s'] - r['prepare_s']:.2f} s)",
            f"CPU floor         {r['plain_s']:.2f} s, {r['plain_cpu_s']:.2f} CPU s (PyAV decode of "
            f"the span, swscale of the planned frames to the clip size)",
            f"ratio             {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU ({verdict} the "
            f"{TARGET_RATIO}x target)",
            f"accuracy          {r['error_mean']:.2f} mean, {r['error_p99']:.1f} p99 levels (0..255) "
            f"from an antialiased resize of PyAV's full-size frames",
        ]
    )


def _synchronise(tensor) -> None:
    if getattr(tensor, "is_cuda", False):
        import torch

        torch.cuda.synchronize(tensor.device)


def _parse(argv):
    p = argparse.ArgumentParser(prog="vqf bench-video", description=__doc__.splitlines()[0])
    p.add_argument(
        "--video", default=None, help="a video file to measure instead of the generated one"
    )
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--gop", type=int, default=None, help="keyframe interval (encoder default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--route", default="pyav", choices=["auto", "nvdec", "dali-cpu", "pyav"])
    p.add_argument("--chunk", type=int, default=64, help="decode.chunk_frames")
    p.add_argument(
        "--prescale", type=float, default=DecodeConfig.prescale, help="decode.prescale (0 = off)"
    )
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--dir", default=None, help="where the video is generated (kept)")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
