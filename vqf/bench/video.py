"""`vqf bench-video`: the video plane against a plain PyAV decode of the same file.

Generates a 720p H.264 video (20 s by default; `--video FILE` measures a file of your own
instead), then prints side by side: how many frames
the plan decodes per frame its clips read (decode-once), seconds per video through the plane
(probe + plan, then the chunked decode + rotate + resize + normalise in the graph), and the
practical CPU floor: PyAV decoding the spanned frames with swscale converting and scaling only
the planned ones straight to the clip size (`frame.reformat`), with their ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.2


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from vqf.config import DecodeConfig, Recipe
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
    """Times the plane and the plain decode `repeat` times each and keeps the best of each."""
    from vqf.video.plane import VideoPlane

    plane = VideoPlane(recipe=recipe, device=device)
    prepared = plane.prepare(path, uri=str(path))
    plane.decode([prepared])  # builds the pipeline: not part of a video's cost
    plane_s, prepare_s, plain_s = [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        prepared = plane.prepare(path, uri=str(path))
        prepare_s.append(time.perf_counter() - started)
        (decoded,) = plane.decode([prepared])
        if isinstance(decoded, Exception):
            raise decoded
        _synchronise(decoded.frames)
        plane_s.append(time.perf_counter() - started)
        plain_s.append(
            floor_seconds(
                path,
                prepared.plan.frames,
                width=recipe.sampling.width,
                height=recipe.sampling.height,
            )
        )
    plane.close()
    plan, info = prepared.plan, prepared.info
    return {
        "file": str(path),
        "video": f"{info.codec} {info.width}x{info.height} {info.frame_count} frames "
        f"{info.duration_s:.1f} s",
        "route": prepared.route,
        "device": device,
        "frames_needed": plan.frames_needed,
        "frames_union": len(plan.frames),
        "frames_stream": int(plan.frames[-1]) + 1,
        "prepare_s": min(prepare_s),
        "plane_s": min(plane_s),
        "plain_s": min(plain_s),
        "output": tuple(decoded.frames.shape),
    }


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
    verdict = "within" if ratio <= TARGET_RATIO else "over"
    return "\n".join(
        [
            f"video             {r['video']} ({r['file']})",
            f"route             {r['route']} on {r['device']}, output {r['output']}",
            f"decode-once       {r['frames_union']} distinct frames for {r['frames_needed']} "
            f"frames read by the clips: {r['frames_union'] / r['frames_needed']:.2f} decoded "
            f"per frame needed (the stream is decoded up to frame {r['frames_stream']}: "
            f"{r['frames_stream'] / r['frames_needed']:.2f})",
            f"plane             {r['plane_s']:.2f} s per video "
            f"(probe+plan {r['prepare_s']:.2f} s, decode+graph {r['plane_s'] - r['prepare_s']:.2f} s)",
            f"CPU floor         {r['plain_s']:.2f} s (PyAV decode of the span, swscale of the "
            f"planned frames to the clip size)",
            f"ratio             {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)",
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
    p.add_argument("--prescale", type=float, default=2.0, help="decode.prescale (0 = off)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--dir", default=None, help="where the video is generated (kept)")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
