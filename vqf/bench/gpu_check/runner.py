"""Sections in child processes under the budget, and the report rewritten after each one."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from vqf.bench.gpu_check.context import Section, read_json, write_json
from vqf.bench.gpu_check.modes import GPU, LOG, REPORT, RESULTS, ROOT, SECTIONS, SMOKE, Mode

MIN_SECTION_S = 10.0  # a section with less time than this left is skipped, not started


def run_check(
    *,
    mode: Mode,
    out: Path,
    work: Path,
    only: tuple[str, ...] | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Runs the sections (`only` these, when given) in order under the budget; returns the
    final report dict. The report lists every section: one not run now keeps what an earlier
    run with the same `work` folder left (marked `earlier`), so a second call with `only`
    completes the first one's report."""
    from vqf.bench.gpu_check.report import figures, write_report

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    chosen = [name for name in SECTIONS if only is None or name in only]
    before = read_json(work / RESULTS) if only is not None else {}
    kept = before.get("sections", {}) if before.get("mode") == mode.name else {}
    budget = mode.budget_s if budget_s is None else budget_s
    report: dict[str, Any] = {
        "mode": mode.name,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "budget_s": budget,
        "only": chosen if only is not None else None,
        "out": str(out),
        "work": str(work),
        "sections": {},
        "figures": {},
    }
    for name in SECTIONS:
        if name in chosen:
            report["sections"][name] = {"status": "pending"}
        elif name in kept and kept[name].get("status") not in ("pending", "running", "not run"):
            report["sections"][name] = {"earlier": before.get("started"), **kept[name]}
        else:
            report["sections"][name] = {"status": "not run"}

    def save() -> None:
        report["figures"] = figures(report)
        write_report(report, out)
        write_json(work / RESULTS, report)  # for a later call with --only

    (out / LOG).write_text("")
    save()
    deadline = time.monotonic() + budget
    for name in chosen:
        left = deadline - time.monotonic()
        limit = min(mode.limits.get(name, left), left)
        if limit < MIN_SECTION_S:
            report["sections"][name] = {"status": "skipped", "error": f"{left:.0f} s left"}
        else:
            report["sections"][name] = {"status": "running", "limit_s": round(limit)}
            save()
            report["sections"][name] = run_section(name, mode=mode, out=out, work=work, limit=limit)
        save()
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    save()
    return report


def run_section(name: str, *, mode: Mode, out: Path, work: Path, limit: float) -> dict[str, Any]:
    """One section in a child process of its own session; killed (the whole group) at `limit`.
    Returns its status, seconds and what it saved (partial when it was cut off)."""
    saved = work / f"section-{name}.json"
    saved.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "vqf.bench.gpu_check", "--section", name, "--out", str(out),
           "--work", str(work), "--limit", f"{limit:.0f}", "--mode", mode.name]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    started = time.monotonic()
    with (out / LOG).open("a") as log:
        log.write(f"\n===== {name} (limit {limit:.0f} s) =====\n")
        log.flush()
        child = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = "ok" if child.wait(timeout=limit) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child's own group: its helpers too
            child.wait()
            status = "timed out"
    entry: dict[str, Any] = {"status": status, "seconds": round(time.monotonic() - started, 1)}
    entry["limit_s"] = round(limit)
    entry.update(read_json(saved))
    if status == "failed" and "error" not in entry:
        entry["error"] = f"exit status {child.returncode} (see {LOG})"
    return entry


def _child(args: argparse.Namespace) -> int:
    from vqf.bench.gpu_check.measure import MEASURES
    from vqf.bench.gpu_check.sections import CHECKS

    mode = {m.name: m for m in (GPU, SMOKE)}[args.mode]
    section = Section(
        args.section, mode=mode, out=Path(args.out), work=Path(args.work), limit=args.limit
    )
    try:
        section.save({**CHECKS, **MEASURES}[args.section](section))
        return 0
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr)
        section.save(error=text[-2000:])
        return 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="vqf gpu-check",
        description="The GPU claims checked and measured: a markdown and a JSON report, "
        "rewritten after every section.",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (about a minute)")
    p.add_argument("--out", default="runs/gpu-check", help="where the report goes")
    p.add_argument(
        "--work",
        default=None,
        help="scratch folder (videos, profile, the report for --only); default under $TMPDIR",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="SECTION,...",
        help=f"run these sections only, keeping the others' results from the last run with "
        f"the same --work; sections: {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="S",
        help="seconds for the whole check (default: the mode's, 390 on a GPU)",
    )
    p.add_argument("--section", default=None, choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="gpu", choices=["gpu", "smoke"], help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=0.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """`vqf gpu-check [--smoke] [--only S,...] [--out DIR]`: exit status 0 when every section
    run this time passed."""
    args = _parse(argv)
    if args.section:
        return _child(args)
    mode = SMOKE if args.smoke else GPU
    only = None
    if args.only is not None:
        only = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = [s for s in only if s not in SECTIONS]
        if unknown or not only:
            print(f"vqf gpu-check: unknown sections {unknown}; allowed: {', '.join(SECTIONS)}")
            return 2
    work = Path(args.work or Path(tempfile.gettempdir()) / f"vqf-gpu-check-{mode.name}")
    out = Path(args.out).resolve()
    report = run_check(mode=mode, out=out, work=work.resolve(), only=only, budget_s=args.budget)
    print((out / REPORT).read_text())
    ran = [
        e for e in report["sections"].values() if "earlier" not in e and e["status"] != "not run"
    ]
    return 0 if all(e["status"] == "ok" for e in ran) else 1
