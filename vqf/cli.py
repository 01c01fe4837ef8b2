"""The `vqf` command: run, score, dedup, probe, doctor, list, models, bench-video, gpu-check."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path

from vqf.config import Recipe, load_recipe, write_resolved
from vqf.errors import ConfigError, OutputFailed, Stopped, StuckThreads, TableError, VqfError
from vqf.logs import configure_logging
from vqf.recipe_args import add_recipe_arguments, recipe_from_args

log = logging.getLogger("vqf")


# commands with their own argument parsers: everything after the name goes to them
PASSTHROUGH = {
    "bench-video": "vqf.bench.video",
    "bench-engine": "vqf.bench.engine",
    "report": "vqf.ops.report",
    "soak": "vqf.bench.soak",
    "gpu-check": "vqf.bench.gpu_check",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        configure_logging()
        return int(importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:]) or 0)
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"vqf: bad configuration: {e}", file=sys.stderr)
        return 2
    except TableError as e:
        print(f"vqf: table error: {e}", file=sys.stderr)
        return 3
    except StuckThreads as e:
        print(f"vqf: {e}", file=sys.stderr)
        return StuckThreads.EXIT_CODE
    except Stopped as e:  # leave now: threads left in native code must not abort the exit
        print(f"vqf: {e}", file=sys.stderr)
        _leave(e.exit_code)
    except OutputFailed as e:
        print(f"vqf: {e}", file=sys.stderr)
        _leave(OutputFailed.EXIT_CODE)
    except VqfError as e:
        print(f"vqf: {e}", file=sys.stderr)
        return 1


def _leave(code: int) -> None:
    """Exits at once with `code` after flushing output (every row is already durable)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vqf", description="GPU video quality filter")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe over a table of videos")
    add_recipe_arguments(run)
    run.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="ranks to spawn on this machine (default: the recipe's engine.gpus, else 1)",
    )
    run.add_argument(
        "--dashboard",
        choices=["auto", "rich", "plain"],
        default="auto",
        help="progress display: auto = the live dashboard on a terminal, else a status line",
    )
    run.set_defaults(func=cmd_run)

    from vqf.bench.profile import add_arguments as profile_arguments

    prof = sub.add_parser(
        "profile", help="run a sample; time per stage, the bottleneck, the floors"
    )
    add_recipe_arguments(prof)
    profile_arguments(prof)
    prof.set_defaults(
        func=lambda a: __import__("vqf.bench.profile", fromlist=["cmd_profile"]).cmd_profile(a)
    )

    score = sub.add_parser(
        "score", help="judge a few videos with the engine of `vqf run`; print a table"
    )
    score.add_argument("videos", nargs="+", metavar="VIDEO", help="a file, oss://... or URL")
    score.add_argument(
        "--recipe", default=None, help="recipe to judge with (default: the demo's weight-free "
        "filters, plus learned filters whose checkpoint the demo recipe configures)",
    )  # fmt: skip
    score.add_argument("--json", action="store_true", help="print the output rows as JSON")
    score.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe key (repeatable)",
    )  # fmt: skip
    score.set_defaults(
        func=lambda a: __import__("vqf.ops.score", fromlist=["cmd_score"]).cmd_score(a)
    )

    from vqf.ops.dedup import add_arguments as dedup_arguments

    dedup = sub.add_parser(
        "dedup", help="near-duplicate videos of a run by the cosine of their embeddings"
    )
    dedup_arguments(dedup)
    dedup.set_defaults(
        func=lambda a: __import__("vqf.ops.dedup", fromlist=["cmd_dedup"]).cmd_dedup(a)
    )

    probe = sub.add_parser("probe", help="print a video's metadata and sampling plan")
    probe.add_argument("target", help="a local file, oss://bucket/key or http(s) URL")
    probe.add_argument("--recipe", default=None, help="recipe whose sampling and storage to use")
    probe.set_defaults(func=cmd_probe)

    doctor = sub.add_parser("doctor", help="what is available here, with hints")
    doctor.add_argument("--recipe", default=None, help="also check this recipe's storage roots")
    doctor.set_defaults(func=cmd_doctor)

    lst = sub.add_parser("list", help="list registered filters, storage tiers or input kinds")
    lst.add_argument("what", choices=["filters", "tiers", "inputs"])
    lst.add_argument("pattern", nargs="?", default="*")
    lst.set_defaults(func=cmd_list)

    models = sub.add_parser("models", help="model checkpoints")
    msub = models.add_subparsers(dest="models_command", required=True)
    init = msub.add_parser("init-random", help="write a complete set of random checkpoints")
    init.add_argument("dir")
    init.add_argument("--size", default="tiny", choices=["tiny", "large", "giant"])
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=cmd_models_init_random)
    imp = msub.add_parser(
        "import",
        help="write a Hugging Face V-JEPA 2 folder, a VJEPA2ForVideoClassification folder or a "
        "head state dict into vqf's checkpoint layout",
        description="Writes SOURCE into the checkpoint folder DIR (backbone folder, "
        "heads/<name>.safetensors, and recipe.yaml merged with earlier imports).",
        epilog=_import_layouts(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("source", help="a V-JEPA 2 folder, or a .pt/.pth/.bin/.safetensors head")
    imp.add_argument("dir", help="the checkpoint folder to write into")
    imp.add_argument(
        "--name",
        default="",
        help="model name of a backbone (default backbone), or file stem of a head",
    )
    imp.add_argument(
        "--filter", default="", help="the filter the head is for: its labels, its recipe entry"
    )
    imp.add_argument("--labels", default=None, help="comma-separated labels, in class order")
    imp.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rewrite a key prefix of a head file before reading it (repeatable)",
    )
    imp.add_argument("--num-heads", type=int, default=0, help="attention heads of the head")
    imp.add_argument("--norm-eps", type=float, default=None, help="LayerNorm epsilon of the head")
    imp.add_argument(
        "--index", type=int, default=None, help="which of a checkpoint's classifiers[] to take"
    )
    imp.set_defaults(func=cmd_models_import)

    for name, help_text in (
        ("bench-video", "decode benchmark of the video plane (prints numbers)"),
        ("bench-engine", "scheduler and memory benchmarks of the streaming engine"),
        ("report", "a self-contained HTML report of a run's outputs"),
        ("soak", "a long run over generated videos: memory, open files, throughput"),
        ("gpu-check", "the GPU claims checked and measured, as a markdown and JSON report"),
    ):
        sub.add_parser(name, add_help=False, help=help_text)  # dispatched in main()
    return p


def resolved_config_path(recipe: Recipe) -> Path:
    """Next to the outputs when they are local, else under runs/."""
    if "://" in recipe.outputs:
        return Path("runs") / f"{recipe.name}.resolved.yaml"
    return Path(recipe.outputs) / "resolved_config.yaml"


def cmd_run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    from vqf.faults import active_faults

    active_faults()  # a bad VQF_FAULT stops the run here, before any video
    from vqf.ops.demo import prepare_demo

    prepare_demo(recipe)
    from vqf.engine.launch import run_job
    from vqf.ops.dashboard import make_status

    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        write_resolved(recipe, resolved_config_path(recipe))
    status = make_status(mode=args.dashboard)
    gpus = recipe.engine.gpus if args.gpus is None else args.gpus
    if gpus < 0:
        raise ConfigError(f"--gpus {gpus} is not allowed", hint="0 or more ranks")
    snaps = run_job(recipe, ranks=max(1, gpus), status=status)
    if rank == 0 and snaps:
        print(f"outputs: {recipe.outputs}")
        if recipe.demo.generate and "://" not in recipe.outputs:
            from vqf.ops.report import write_report

            out = write_report(recipe.outputs, out=Path(recipe.outputs) / "report.html")
            print(f"report: {out}  (open it in a browser)")
        elif "://" not in recipe.outputs:
            print(f"report: vqf report {recipe.outputs} --out report.html")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from vqf.config import build

    recipe = load_recipe(args.recipe) if args.recipe else build(Recipe, {}, "recipe")
    from vqf.video.probe import describe

    target = args.target
    if "://" in target and not target.startswith("file://"):
        from vqf.schema import InputRow
        from vqf.storage import Fetcher

        bucket, _, key = target.partition("://")[2].partition("/")
        row = InputRow(
            video_id="probe",
            oss_bucket=bucket if target.startswith("oss://") else "",
            video_path=key if target.startswith("oss://") else target,
        )
        with Fetcher(recipe.storage).fetch(row) as fetched:
            print(describe(fetched.path, recipe=recipe))
        return 0
    print(describe(Path(target.removeprefix("file://")), recipe=recipe))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from vqf.ops.doctor import report

    recipe = load_recipe(args.recipe) if args.recipe else None
    text = report(recipe)
    print(text)
    return 1 if "[FAIL]" in text else 0  # an install that cannot work; [MISS] is only absent


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "filters":
        from vqf.filters import FILTERS, describe_filters

        for entry in describe_filters():
            if entry["name"] in FILTERS.names(args.pattern):
                print(json.dumps(entry))
    elif args.what == "inputs":
        from vqf.tables.videos import INPUTS, describe_inputs

        for entry in describe_inputs():
            if entry["name"] in INPUTS.names(args.pattern):
                print(json.dumps(entry))
    else:
        from vqf.storage import TIERS

        for name in TIERS.names(args.pattern):
            print(name)
    return 0


def cmd_models_init_random(args: argparse.Namespace) -> int:
    from vqf.models.checkpoints import init_random

    out = init_random(Path(args.dir), size=args.size, seed=args.seed)
    print(f"wrote random {args.size} checkpoints under {args.dir}")
    if out:
        print(out)
    return 0


def _import_layouts() -> str:
    """The key layouts a head file may be in (head_layouts.py's docstring), for --help."""
    from vqf.models import head_layouts

    return (head_layouts.__doc__ or "").partition("\n\n")[2]


def cmd_models_import(args: argparse.Namespace) -> int:
    from vqf.models.importer import import_checkpoint

    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    result = import_checkpoint(
        args.source,
        args.dir,
        name=args.name,
        filter_name=args.filter,
        labels=labels,
        rename=args.rename,
        num_heads=args.num_heads,
        norm_eps=args.norm_eps,
        index=args.index,
    )
    print(result.summary())
    if result.fragment:
        import yaml

        print("recipe fragment (also in DIR/recipe.yaml):")
        print(yaml.safe_dump(result.fragment, sort_keys=False).rstrip())
    return 0


def entry() -> None:
    """The `vqf` command as a process: `main`, then exit. Stage threads given up on past a
    deadline may still sit in native code (a decoder, a driver call); the interpreter's
    teardown would destroy their pipelines under them, so the process leaves at once instead,
    once every row is durable and the output is flushed."""
    code = main()
    stuck = [t for t in threading.enumerate() if t.daemon and t.name.startswith("vqf-")]
    if not stuck:
        sys.exit(code)
    logging.shutdown()
    _leave(int(code or 0))


if __name__ == "__main__":
    entry()
