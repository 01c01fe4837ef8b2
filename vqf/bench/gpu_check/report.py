"""The check's report: headline figures from the sections' results, as markdown and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqf.bench.gpu_check.context import write_json
from vqf.bench.gpu_check.modes import LOG, PATHS_TESTS, REPORT, RESULTS


# -- figures: the numbers the issue asks for, in one place ------------------------------------
def figures(report: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers from the sections' results; a figure not measured is left out."""

    def result(name: str) -> dict[str, Any]:
        return (report["sections"].get(name) or {}).get("result") or {}

    out: dict[str, Any] = {}
    keys = ("tests", "passed", "failures", "errors", "skipped")
    for name in ("gpu_paths", "gpu_tests"):
        tests = result(name)
        if "tests" in tests:
            out[name] = {k: tests[k] for k in keys}
    if "gpu_paths" in out or "gpu_tests" in out:  # all of `pytest -m gpu` that ran
        parts = [out[n] for n in ("gpu_paths", "gpu_tests") if n in out]
        out["pytest"] = {k: sum(p[k] for p in parts) for k in keys}
    rows = [r for r in result("nvdec").get("rows", []) if r.get("decode_fps")]
    if rows:
        out["nvdec_fps_by_sessions"] = {r["sessions"]: round(r["decode_fps"]) for r in rows}
        best = max(rows, key=lambda r: r["decode_fps"])
        keys = ("sessions", "decode_fps", "videos_per_s", "nvdec_mean")
        out["nvdec_best"] = {k: best.get(k) for k in keys}
    for name, r in result("backbone").get("dtypes", {}).items():
        out[f"vjepa2_tflops_{name}"] = r["tflop_per_s"]
    p, base = result("profile"), result("baseline")
    if "videos_per_s" in p:
        out["vqf_videos_per_s"] = p["videos_per_s"]
        out["vqf_synchronised"] = bool(p.get("synchronised"))
        floors = p.get("floors") or p.get("reference_floors")
        if floors and floors.get("binding"):
            name, vps = floors["binding"]
            out["floor_datasheet"] = {
                "binding": name,
                "videos_per_s": vps,
                "reached": p["videos_per_s"] / vps,
                "source": "this GPU" if p.get("floors") else "an H200 by the datasheet",
            }
        measured = measured_floors(p, rows, result("backbone"))
        if measured:
            out["floor_measured"] = measured
    if base.get("videos_per_s"):
        out["baseline_videos_per_s"] = base["videos_per_s"]
        out["baseline_videos"] = f"{base.get('done', base.get('videos'))} of {base.get('videos')}"
        if "vqf_videos_per_s" in out:
            out["speedup"] = out["vqf_videos_per_s"] / base["videos_per_s"]
    return out


def measured_floors(profile, nvdec_rows, backbone) -> dict[str, Any] | None:
    """Section 8's floors from this machine's own rates: the best NVDEC fps over the frames
    each video needs decoded, and the backbone's TFLOP/s in the dtype the profile's backbones
    ran in (bf16 on Hopper by `auto`, fp32 on a CPU) over the FLOPs of a video's clips. No
    model floor when that dtype was not measured: another dtype's rate is not this run's."""
    w = profile["workload"]
    floors: dict[str, Any] = {}
    if nvdec_rows and w["frames_decoded_per_video"]:
        floors["decode"] = max(r["decode_fps"] for r in nvdec_rows) / w["frames_decoded_per_video"]
    rates = {k: v["tflop_per_s"] for k, v in backbone.get("dtypes", {}).items()}
    dtype = profile_dtype(profile)
    rate = rates.get(dtype) if dtype else None
    if rate and w["tflop_per_video"] > 0:
        floors["model"] = rate / w["tflop_per_video"]
    if not floors:
        return None
    name, vps = min(floors.items(), key=lambda kv: kv[1])
    return {
        **floors,
        "model_dtype": dtype,
        "binding": name,
        "videos_per_s": vps,
        "reached": profile["videos_per_s"] / vps,
    }


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def profile_dtype(profile: dict[str, Any]) -> str | None:
    """The torch dtype name the profile's backbones ran in (None: none, or several)."""
    found = {DTYPES.get(p["dtype"], p["dtype"]) for p in (profile.get("precision") or {}).values()}
    return found.pop() if len(found) == 1 else None


# -- markdown ----------------------------------------------------------------------------------
def write_report(report: dict[str, Any], out: Path) -> None:
    write_json(out / RESULTS, report)
    tmp = out / f".{REPORT}.tmp"
    tmp.write_text(render_markdown(report))
    tmp.replace(out / REPORT)


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# vqf GPU check ({report['mode']})",
        "",
        f"Started {report['started']}"
        + (f", finished {report['finished']}" if "finished" in report else ", still running")
        + f"; budget {report['budget_s']:.0f} s. Full numbers: {RESULTS}; output: {LOG}.",
        "",
        "| section | status | seconds | limit s |",
        "| --- | --- | --- | --- |",
    ]
    if report.get("only"):
        lines[4:4] = [
            f"This call ran {', '.join(report['only'])}; a section marked `earlier` is from the "
            "run that started at the time it names (same work folder).",
            "",
        ]
    for name, entry in report["sections"].items():
        lines.append(
            f"| {name} | {_status(entry)} | {_n(entry.get('seconds'), '.0f')} "
            f"| {_n(entry.get('limit_s'), '.0f')} |"
        )
    lines += ["", *_figures_md(report.get("figures") or {})]
    for name, entry in report["sections"].items():
        lines += ["", f"## {name}: {_status(entry)}", ""]
        if entry.get("error"):
            lines += ["```", entry["error"].strip()[-1500:], "```", ""]
        result = entry.get("result")
        lines += RENDER[name](result, report) if result else ["(no result)"]
    return "\n".join(lines) + "\n"


def _status(entry: dict[str, Any]) -> str:
    earlier = entry.get("earlier")
    return entry["status"] + (f" (earlier: {earlier})" if earlier else "")


def _figures_md(f: dict[str, Any]) -> list[str]:
    lines = ["## Figures", ""]
    for key, label in (("pytest", "pytest -m gpu, all that ran"), ("gpu_paths", PATHS_TESTS)):
        t = f.get(key)
        lines.append(
            f"- {label}: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
            f"{t['skipped']} skipped of {t['tests']}"
            if t
            else f"- {label}: missing"
        )
    by = f.get("nvdec_fps_by_sessions")
    lines.append(
        "- NVDEC decode fps by sessions in flight: "
        + (", ".join(f"{k}: {v}" for k, v in by.items()) if by else "missing")
    )
    best = f.get("nvdec_best")
    if best:
        lines.append(
            f"- NVDEC best: {best['decode_fps']:.0f} fps at {best['sessions']} sessions, "
            f"{best['videos_per_s']:.2f} videos/s, NVML decoder utilisation "
            + (
                "n/a (no NVML reading)"
                if best["nvdec_mean"] is None
                else f"{best['nvdec_mean']:.0f}%"
            )
        )
    dtypes = sorted(k for k in f if k.startswith("vjepa2_tflops_"))
    lines += [f"- V-JEPA 2 {k.rsplit('_', 1)[1]}: {f[k]:.4g} TFLOP/s" for k in dtypes]
    if not dtypes:
        lines.append("- V-JEPA 2 TFLOP/s: missing")
    lines.append(
        f"- videos/s: vqf {_get(f, 'vqf_videos_per_s', '.3f')}"
        + (SYNC if f.get("vqf_synchronised") else "")
        + f", seed baseline {_get(f, 'baseline_videos_per_s', '.3f')}"
        + (f" ({f['baseline_videos']} videos)" if "baseline_videos" in f else "")
        + f", speedup {_get(f, 'speedup', '.2f')}"
    )
    for key, label in (("floor_datasheet", "datasheet"), ("floor_measured", "measured here")):
        floor = f.get(key)
        lines.append(
            f"- floor ({label}): {floor['binding']} binds at {floor['videos_per_s']:.3g} "
            f"videos/s; vqf reached {floor['reached']:.1%}"
            + (f" ({floor['source']})" if floor.get("source") else "")
            + (f" (model rate: {floor['model_dtype']})" if floor.get("model_dtype") else "")
            if floor
            else f"- floor ({label}): missing"
        )
    return lines


SYNC = " (a lower bound: profiling waits for the GPU after each backbone call)"


def _md_env(r: dict[str, Any], report) -> list[str]:
    return ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in r.items())]


def _md_videos(r: dict[str, Any], report) -> list[str]:
    return [
        f"{r.get('codec')} {r.get('width')}x{r.get('height')}, {r.get('frames')} frames over "
        f"{r.get('seconds')} s ({r.get('fps')} fps), GOP {r.get('gop')}, B-frames "
        f"{r.get('b_frames')}, {r.get('mb')} MB = {r.get('mbit_per_s')} Mbit/s; route here "
        f"{r.get('route_here')}; generated in {r.get('generate_s')} s: `{r.get('path')}`"
    ]


def _md_pytest(r: dict[str, Any], report) -> list[str]:
    lines = [f"`{r.get('command')}` (VQF_REQUIRE_GPU={'1' if r.get('require_gpu') else 'unset'})"]
    if "tests" in r:
        lines.append(
            f"\n{r['tests']} tests: {r['passed']} passed, {r['failures']} failed, "
            f"{r['errors']} errors, {r['skipped']} skipped"
            + (f" in {r['pytest_s']} s" if "pytest_s" in r else " (before the cut-off)")
        )
    lines += [f"- FAILED {name}" for name in r.get("failed", [])]
    if r.get("tail"):
        lines += ["", "```", *r["tail"][-14:], "```"]
    return lines


def _md_nvdec(r: dict[str, Any], report) -> list[str]:
    lines = [
        f"Video `{r.get('video')}`, decode.route={r.get('route_asked')}; NVDEC floor of this GPU "
        f"{_n(r.get('floor_fps'), '.0f')} fps (its engines x 771 fps of 1080p H.264). Frames "
        "decoded count each chunk's run from its keyframe; planned are the frames the clips read. "
        "Time and NVML readings start once every lane has built its pipeline.",
        "",
        "| sessions | videos | route | frames decoded | planned | s | decode fps | planned fps "
        "| videos/s | NVDEC % mean / max | GPU % mean | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r.get("rows", []):
        lines.append(
            f"| {row['sessions']} | {row['videos']} | {','.join(row['routes'])} "
            f"| {row['frames_decoded']} | {row['frames_planned']} | {row['seconds']:.2f} "
            f"| {row['decode_fps']:.0f} | {row['planned_fps']:.0f} | {row['videos_per_s']:.2f} "
            f"| {_n(row['nvdec_mean'], '.0f')} / {_n(row['nvdec_max'], '.0f')} "
            f"| {_n(row['gpu_util_mean'], '.0f')} | {len(row['errors'])} |"
        )
    errors = sorted({e for row in r.get("rows", []) for e in row["errors"]})
    return lines + [f"- error: {e}" for e in errors[:5]]


def _md_backbone(r: dict[str, Any], report) -> list[str]:
    lines = [
        f"{r.get('model')} on {r.get('device')}, random weights: clips {r.get('clips')}, "
        f"{r.get('tokens_per_clip')} tokens and {_n(r.get('tflop_per_clip'), '.3g')} TFLOP "
        "per clip (vqf.bench.floors.clip_flops); the median of the timed calls (CUDA events on "
        "a GPU, the wall clock on a CPU).",
        "",
        "| dtype | ms per call (min, max) | clips/s | TFLOP/s | matmul TFLOP/s | of matmul | finite |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, d in r.get("dtypes", {}).items():
        mm = r.get("matmul", {}).get(name)
        share = f"{d['tflop_per_s'] / mm:.0%}" if mm else "n/a"
        low, high = d["ms_min_max"]
        lines.append(
            f"| {name} | {d['ms_per_call']:.1f} ({low:.1f}, {high:.1f}) | {d['clips_per_s']:.2f} "
            f"| {d['tflop_per_s']:.4g} | {_n(mm, '.4g')} | {share} | {d['finite']} |"
        )
    return lines


def _md_profile(r: dict[str, Any], report) -> list[str]:
    b = (report["sections"].get("baseline") or {}).get("result") or {}

    def util(gpu, key):
        gpu = gpu or {}
        return f"{_n(gpu.get(key + '_mean'), '.0f')} / {_n(gpu.get(key + '_max'), '.0f')}"

    whole, busy = r.get("gpu"), r.get("gpu_processing")
    lines = [
        f"{r.get('recipe')} on {r.get('device')}: {r.get('videos')} rows, "
        f"{r.get('succeeded')} succeeded, failures {r.get('failures')}. Side by side with the "
        f"seed's design on the first {b.get('videos', 'n/a')} of them (section baseline).",
        "",
        "| | vqf | seed baseline |",
        "| --- | --- | --- |",
        f"| videos/s | {_n(r.get('videos_per_s'), '.3f')}"
        + (
            " (a lower bound: synchronised after each backbone call)"
            if r.get("synchronised")
            else ""
        )
        + f" | {_n(b.get('videos_per_s'), '.3f')} |",
        f"| videos | {r.get('succeeded')} of {r.get('videos')} "
        f"| {b.get('succeeded', 'n/a')} of {b.get('done', 'n/a')} done, {b.get('videos', 'n/a')} asked |",
        f"| backbone dtype | {', '.join(sorted({p['dtype'] for p in (r.get('precision') or {}).values()})) or 'n/a'} | the same |",
        f"| seconds (loading left out) | {_n(r.get('processing_s'), '.1f')} "
        f"| {_n(b.get('seconds'), '.1f')} |",
        f"| GPU % mean / max while working | {util(busy, 'util')} | {util(b.get('gpu'), 'util')} |",
        f"| NVDEC % mean / max while working | {util(busy, 'nvdec')} "
        f"| {util(b.get('gpu'), 'nvdec')} |",
        f"| GPU % mean / max, whole run | {util(whole, 'util')} | n/a |",
    ]
    floors = r.get("floors") or r.get("reference_floors")
    if floors:
        label = "this GPU" if r.get("floors") else "an H200 by the datasheet, not this device"
        binding = floors.get("binding")
        reached = (
            f"; vqf reached {r['videos_per_s'] / binding[1]:.1%} of the {binding[0]} floor"
            if binding
            else ""
        )
        lines += [
            "",
            f"Floors ({label}): decode {_n(floors.get('decode_videos_per_s'), '.3g')} videos/s, "
            f"model {_n(floors.get('model_videos_per_s'), '.3g')} videos/s "
            f"({_n(floors.get('tflop_per_video'), '.3g')} TFLOP per video){reached}.",
        ]
    if r.get("report"):
        lines += ["", "```", r["report"], "```"]
    return lines


def _md_baseline(r: dict[str, Any], report) -> list[str]:
    done = r.get("done", r.get("videos"))
    ends = ", ".join(f"{t:.1f}" for t in r.get("finished_s", []))
    return [
        f"{r.get('design')}: {r.get('succeeded')} succeeded of {done} done ({r.get('videos')} "
        f"asked) on {r.get('workers')} workers ({r.get('device')}) in "
        f"{_n(r.get('seconds'), '.1f')} s, {_n(r.get('videos_per_s'), '.3f')} videos/s (model "
        f"loading left out; saved after each video, videos ended at {ends or 'n/a'} s)."
    ]


RENDER = {
    "env": _md_env,
    "videos": _md_videos,
    "gpu_paths": _md_pytest,
    "gpu_tests": _md_pytest,
    "nvdec": _md_nvdec,
    "backbone": _md_backbone,
    "profile": _md_profile,
    "baseline": _md_baseline,
}


def _n(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _get(f: dict[str, Any], key: str, fmt: str) -> str:
    return _n(f[key], fmt) if key in f else "missing"
