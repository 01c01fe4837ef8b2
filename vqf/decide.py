"""Keep or drop: the recipe's thresholds applied to the scores a row already holds.

Scoring and deciding are separate: filters always write their scores; a recipe may add
`filters.<name>.thresholds: {<path>_min: value, <path>_max: value}`. `<path>` leads into the
filter's object in the row's info, with `.` (or `/`, handy in `--set`) between keys; it
starts at the filter's first info key unless its first part names one of the filter's keys,
and `*` stands for every entry of a segment map or list (each must pass). Booleans count as
0/1, so `static_max: 0` drops static videos. Examples:

    filters:
      motion: {thresholds: {score_min: 0.004}}
      exposure: {thresholds: {mean_luma_min: 0.15, bright_share_max: 0.5}}
      vfx: {thresholds: {result.VFX_video_max: 0.5}}
      low_quality: {thresholds: {seg_low_quality_filter.*.low_quality.result.low_quality_max: 0.8}}

A row passes when every rule holds; `reasons` names each rule that failed and its value.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from vqf.config import Recipe
from vqf.errors import ConfigError

OPS = {"min": ">=", "max": "<="}
_KEY = re.compile(r"^(?P<path>.+)_(?P<op>min|max)$")


@dataclass(frozen=True)
class Rule:
    """One threshold: the value at `path` in filter `filter`'s info must be >= or <= `bound`."""

    filter: str
    key: str
    path: tuple[str, ...]
    op: str
    bound: float

    @property
    def name(self) -> str:
        return f"{self.filter}.{self.key}"

    def passes(self, value: float) -> bool:
        return value >= self.bound if self.op == "min" else value <= self.bound


def rules_of(recipe: Recipe) -> list[Rule]:
    """Every enabled filter's thresholds as rules; a malformed key raises ConfigError."""
    return [
        rule
        for name, spec in recipe.filters.items()
        if spec.enable
        for rule in parse_rules(name, spec.thresholds)
    ]


def parse_rules(name: str, thresholds: dict[str, Any]) -> list[Rule]:
    """Filter `name`'s `thresholds` mapping as rules; a malformed key raises ConfigError."""
    rules = []
    for key, bound in (thresholds or {}).items():
        match = _KEY.match(key)
        if not match:
            raise ConfigError(
                f"filters.{name}.thresholds.{key} does not end in _min or _max",
                hint="write <path>_min: value (keep when >=) or <path>_max: value (keep when <=)",
            )
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
            raise ConfigError(f"filters.{name}.thresholds.{key} = {bound!r} is not a number")
        path = tuple(p for p in re.split(r"[./]", match["path"]) if p)
        rules.append(Rule(name, key, path, match["op"], float(bound)))
    return rules


def info_path(rule: Rule) -> tuple[str, ...]:
    """The rule's path from the root of a row's info."""
    keys = filter_keys(rule.filter)
    return rule.path if rule.path[0] in keys else (keys[0], *rule.path)


def thresholds_version(rules: list[Rule]) -> str:
    """A short hash of the rules, so rows say exactly which thresholds decided them."""
    canon = json.dumps(sorted((r.filter, r.key, r.bound) for r in rules))
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def decide(info: dict[str, Any], *, recipe: Recipe) -> dict[str, Any]:
    """{"keep", "reasons", "decided_by"} for a row's `info`; {} when the recipe sets no thresholds."""
    rules = rules_of(recipe)
    if not rules:
        return {}
    reasons = []
    for rule in rules:
        reason = check(rule, info)
        if reason:
            reasons.append(reason)
    return {
        "keep": not reasons,
        "reasons": reasons,
        "decided_by": {
            "recipe": recipe.name,
            "thresholds": thresholds_version(rules),
            "models": models_of(recipe, sorted({r.filter for r in rules})),
        },
    }


def check(rule: Rule, info: dict[str, Any]) -> str | None:
    """Why `info` fails `rule`, or None when it passes."""
    values = _lookup(info, info_path(rule))
    if not values:
        return f"{rule.name}: no score at {'.'.join(rule.path)}"
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    if len(numbers) != len(values):
        return f"{rule.name}: not a number at {'.'.join(rule.path)}"
    worst = min(numbers) if rule.op == "min" else max(numbers)
    if rule.passes(worst):
        return None
    sign = "<" if rule.op == "min" else ">"
    return f"{rule.name}: {worst:.4g} {sign} {rule.bound:g}"


def models_of(recipe: Recipe, filters: list[str]) -> dict[str, str]:
    """Which weights scored each deciding filter: model, weights path or random, and head."""
    from vqf.filters.base import FILTERS

    out = {}
    for name in filters:
        spec = recipe.filters[name]
        cls = FILTERS.get(name) if name in FILTERS else None
        model_name = spec.model or (cls.default_model if cls else "")
        if not model_name:
            out[name] = "weight-free"
            continue
        model = recipe.models.get(model_name)
        weights = (
            "?"
            if model is None
            else (f"random-{model.size}" if model.init == "random" else model.path)
        )
        head = ""
        if cls is not None and cls.head_kind:
            head = f", head={spec.head or 'random'}"
        out[name] = f"{model_name}={weights}{head}"
    return out


def filter_keys(name: str) -> tuple[str, ...]:
    """The info keys filter `name` writes (its own name when it is not registered)."""
    from vqf.filters.base import FILTERS

    if name not in FILTERS:
        return (name,)
    cls = FILTERS.get(name)
    return tuple(cls.keys.values())


def _lookup(node: Any, path: tuple[str, ...]) -> list[Any]:
    """Values at `path` under `node`; `*` fans out over a mapping's values or a list."""
    if not path:
        return [node] if node is not None else []
    head, rest = path[0], path[1:]
    if head == "*":
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
        )
        return [v for child in children for v in _lookup(child, rest)]
    if isinstance(node, dict) and head in node:
        return _lookup(node[head], rest)
    if isinstance(node, list) and head.isdigit() and int(head) < len(node):
        return _lookup(node[int(head)], rest)
    return []
