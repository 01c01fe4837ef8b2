"""A recipe from the command line: the recipe file, the seed's flags and `--set` overrides.

Shared by the `vqf` command (`run`, `profile`) and the measurement tools that take a recipe.
"""

from __future__ import annotations

import argparse

from vqf.config import SEED_FLAGS, Recipe, load_recipe, seed_flag_overrides
from vqf.errors import ConfigError


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe path, one option per seed flag (`--tables`, `--outputs`, ...) and `--set`."""
    p.add_argument("recipe", help="a YAML recipe, e.g. pipelines/demo.yaml")
    for flag in SEED_FLAGS:
        p.add_argument(f"--{flag}", default=None, metavar="VALUE")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key, e.g. --set engine.clip_batch=4 (repeatable)",
    )


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe the arguments name, with the flags and overrides applied; every filter name
    known, and an input and an output table named."""
    flags = {flag: getattr(args, flag) for flag in SEED_FLAGS}
    recipe = load_recipe(args.recipe, overrides=[*seed_flag_overrides(flags), *args.overrides])
    from vqf.filters import FILTERS

    for name in recipe.filters:
        FILTERS.get(name)  # an unknown filter name is a ConfigError listing the known ones
    if not recipe.tables or not recipe.outputs:
        raise ConfigError(
            "the recipe names no input or output table", hint="pass --tables URI --outputs URI"
        )
    return recipe
