"""Keep/drop decisions from the recipe's thresholds: rules, reasons, and who decided."""

from __future__ import annotations

from pathlib import Path

import pytest

from vqf.config import Recipe, build, load_recipe
from vqf.decide import decide, rules_of, thresholds_version
from vqf.errors import ConfigError
from vqf.filters import borders, cuts, exposure, motion, sharpness  # noqa: F401  registers them

ROOT = Path(__file__).parent.parent

INFO = {
    "motion": {
        "score": 0.0001,
        "frozen_ratio": 1.0,
        "static": True,
        "segments": {
            "0": {"duration": [0, 4], "score": 0.01},
            "1": {"duration": [3, 7], "score": 0.0},
        },
    },
    "cuts": {"count": 2, "times": [1.0, 2.0], "max_distance": 0.9},
    "vfx_filter": {
        "result": {"VFX_video": 0.9, "normal_video": 0.1},
        "label": "VFX_video",
        "prob": 0.9,
    },
}


def recipe_with(filters: dict, **extra) -> Recipe:
    models = {"backbone": {"kind": "vjepa2", "init": "random", "size": "tiny"}}
    return build(Recipe, {"name": "r1", "models": models, "filters": filters, **extra}, "recipe")


def test_a_row_that_passes_every_rule_is_kept():
    recipe = recipe_with(
        {
            "cuts": {"thresholds": {"count_max": 2}},
            "motion": {"thresholds": {"frozen_ratio_max": 1}},
        }
    )
    verdict = decide(INFO, recipe=recipe)
    assert verdict["keep"] is True and verdict["reasons"] == []


def test_each_failed_rule_is_a_reason_with_its_value():
    recipe = recipe_with(
        {
            "motion": {"thresholds": {"score_min": 0.004, "static_max": 0}},
            "cuts": {"thresholds": {"count_max": 0}},
        }
    )
    verdict = decide(INFO, recipe=recipe)
    assert verdict["keep"] is False
    assert verdict["reasons"] == [
        "motion.score_min: 0.0001 < 0.004",
        "motion.static_max: 1 > 0",  # booleans count as 0/1
        "cuts.count_max: 2 > 0",
    ]
    assert INFO["motion"]["score"] == 0.0001  # scores stay as they were


def test_wildcards_need_every_window_to_pass_and_paths_may_start_at_a_key():
    recipe = recipe_with(
        {
            "motion": {"thresholds": {"segments.*.score_min": 0.005}},
            "vfx": {"thresholds": {"vfx_filter.result.VFX_video_max": 0.5}},
        }
    )
    verdict = decide(INFO, recipe=recipe)
    assert verdict["reasons"] == [
        "motion.segments.*.score_min: 0 < 0.005",
        "vfx.vfx_filter.result.VFX_video_max: 0.9 > 0.5",
    ]


def test_a_missing_score_drops_the_row_and_says_so():
    recipe = recipe_with({"motion": {"thresholds": {"scroe_min": 0.1}}})
    verdict = decide(INFO, recipe=recipe)
    assert verdict["keep"] is False and verdict["reasons"] == [
        "motion.scroe_min: no score at scroe"
    ]
    assert (
        decide({}, recipe=recipe_with({"cuts": {"thresholds": {"count_max": 0}}}))["keep"] is False
    )


def test_decided_by_names_the_recipe_the_thresholds_and_the_models():
    filters = {
        "motion": {"thresholds": {"score_min": 0.004}},
        "vfx": {"thresholds": {"prob_max": 0.5}},
    }
    verdict = decide(INFO, recipe=recipe_with(filters))
    by = verdict["decided_by"]
    assert by["recipe"] == "r1"
    assert by["models"] == {"motion": "weight-free", "vfx": "backbone=random-tiny, head=random"}
    stricter = decide(
        INFO, recipe=recipe_with({**filters, "motion": {"thresholds": {"score_min": 0.01}}})
    )
    assert len(by["thresholds"]) == 12 and stricter["decided_by"]["thresholds"] != by["thresholds"]
    assert thresholds_version(rules_of(recipe_with(filters))) == by["thresholds"]


def test_no_thresholds_means_nothing_decided_and_disabled_filters_do_not_decide():
    assert decide(INFO, recipe=recipe_with({"motion": {}})) == {}
    off = recipe_with({"cuts": {"enable": False, "thresholds": {"count_max": 0}}})
    assert decide(INFO, recipe=off) == {}


def test_malformed_thresholds_are_config_errors():
    with pytest.raises(ConfigError, match="does not end in _min or _max") as e:
        rules_of(recipe_with({"motion": {"thresholds": {"score": 0.1}}}))
    assert "keep when" in str(e.value.hint)
    with pytest.raises(ConfigError, match="not a number"):
        recipe_with({"motion": {"thresholds": {"score_min": "high"}}})


def test_thresholds_from_yaml_and_from_a_set_override(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: mine\nfilters:\n  motion:\n    thresholds: {score_min: 0.004}\n")
    recipe = load_recipe(
        path,
        overrides=[
            "filters.cuts.thresholds.count_max=0",
            "filters.motion.thresholds.segments/*/score_min=0.1",
        ],
    )
    names = [r.name for r in rules_of(recipe)]
    assert names == ["motion.score_min", "motion.segments/*/score_min", "cuts.count_max"]
    verdict = decide(INFO, recipe=recipe)
    assert verdict["reasons"] == [
        "motion.score_min: 0.0001 < 0.004",
        "motion.segments/*/score_min: 0 < 0.1",
        "cuts.count_max: 2 > 0",
    ]


def test_the_demo_recipe_decides_with_weight_free_filters_only():
    recipe = load_recipe(ROOT / "pipelines" / "demo.yaml")
    rules = rules_of(recipe)
    assert {r.filter for r in rules} == {
        "borders",
        "motion",
        "sharpness",
        "exposure",
        "cuts",
        "camera",
        "bitrate",
    }
    assert set(decide({}, recipe=recipe)["decided_by"]["models"].values()) == {"weight-free"}
