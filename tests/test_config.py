"""Recipes, overrides, the seed's flags, and the row contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vqf.config import load_recipe, resolved_dict, seed_flag_overrides, write_resolved
from vqf.errors import ConfigError, ErrorType, Stage, VideoError
from vqf.schema import OUTPUT_COLUMNS, DeviceInfo, failure_record, parse_input_row, success_record

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_pipeline_loads(path):
    recipe = load_recipe(path)
    assert recipe.name == yaml.safe_load(path.read_text()).get("name", path.stem)
    assert recipe.filters, "a recipe without filters judges nothing"
    from vqf.filters import FILTERS

    for name in recipe.filters:
        assert name in FILTERS


def test_seed_flags_override_the_recipe():
    flags = {
        "tables": "in.jsonl",
        "outputs": "out",
        "vfx_enable": "false",
        "com_enable": "True",
        "rov_enable": None,
        "low_quality_enable": "false",
    }
    recipe = load_recipe(PIPELINES[0].parent / "demo.yaml", overrides=seed_flag_overrides(flags))
    assert recipe.tables == "in.jsonl" and recipe.outputs == "out"
    assert recipe.filters["vfx"].enable is False
    assert recipe.filters["simcam"].enable is True
    assert recipe.filters["rov"].enable is True  # untouched
    assert recipe.filters["low_quality"].enable is False


def test_seed_flag_with_a_bad_boolean_is_a_clear_error():
    with pytest.raises(ConfigError) as e:
        seed_flag_overrides({"vfx_enable": "yes please"})
    assert "yes please" in str(e.value) and "true, false" in str(e.value)


def test_set_overrides_nested_keys_and_types():
    demo = PIPELINES[0].parent / "demo.yaml"
    recipe = load_recipe(demo, overrides=["engine.clip_batch=3", "sampling.mean=[0.5, 0.5, 0.5]"])
    assert recipe.engine.clip_batch == 3
    assert recipe.sampling.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "override, words",
    [
        ("engine.clip_bach=3", ["engine.clip_bach", "clip_batch"]),  # typo: names the allowed keys
        ("decode.route=gpu", ["gpu", "nvdec", "dali-cpu", "pyav"]),
        ("engine.clip_batch=many", ["many", "integer"]),
        ("filters.vfx.enable=maybe", ["maybe", "true, false"]),
        ("filters.vfx.model=nope", ["nope", "backbone"]),
    ],
)
def test_bad_keys_and_values_name_the_key_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_recipe(PIPELINES[0].parent / "demo.yaml", overrides=[override])
    for word in words:
        assert word in str(e.value)


def test_unknown_top_level_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfiltres: {}\n")
    with pytest.raises(ConfigError, match="filtres"):
        load_recipe(bad)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(evil)


def test_resolved_config_masks_secrets(tmp_path):
    secret = "SECRET-planted-0xC0FFEE"
    recipe = load_recipe(
        PIPELINES[0].parent / "demo.yaml",
        overrides=[
            f"storage.oss.access_key_secret={secret}",
            "storage.oss.access_key_id=AKID-planted",
        ],
    )
    write_resolved(recipe, tmp_path / "resolved.yaml")
    text = (tmp_path / "resolved.yaml").read_text()
    assert secret not in text and "AKID-planted" not in text
    assert resolved_dict(recipe)["engine"]["clip_batch"] == recipe.engine.clip_batch
    assert yaml.safe_load(text)["storage"]["oss"]["access_key_secret"] == "***"


def test_input_row_parsing():
    row = parse_input_row(
        {
            "video_id": 7,
            "oss_bucket": "b",
            "video_path": "a/b.mp4",
            "video_tag": "t",
            "info": '{"use_alluxio": true}',
        }
    )
    assert row.video_id == "7" and row.use_alluxio and row.uri == "oss://b/a/b.mp4"
    for bad, words in [
        ({"video_path": "x.mp4"}, "video_id"),
        ({"video_id": "1"}, "video_path"),
        ({"video_id": "1", "video_path": "x", "info": "{not json"}, "not valid JSON"),
        ({"video_id": "1", "video_path": "x", "info": "[1, 2]"}, "JSON object"),
    ]:
        with pytest.raises(VideoError) as e:
            parse_input_row(bad)
        assert e.value.type == ErrorType.ROW_MALFORMED and words in e.value.message


def test_output_records_have_the_seed_columns():
    row = parse_input_row({"video_id": "v", "oss_bucket": "b", "video_path": "k.mp4"})
    ok = success_record(
        row,
        {"vfx_filter": {"label": "normal_video"}},
        start_time="a",
        end_time="b",
        cost_s=1.5,
        device=DeviceInfo(name="cpu"),
    )
    err = VideoError(ErrorType.NOT_FOUND, "no tier has it", stage=Stage.FETCH)
    bad = failure_record({"video_id": "v"}, err, row=row)
    for record in (ok, bad):
        assert tuple(record) == OUTPUT_COLUMNS
        assert all(isinstance(v, str) for v in record.values())
    assert json.loads(ok["result_info"])["succeed"] == "true"
    result = json.loads(bad["result_info"])
    assert result["succeed"] == "false"
    assert result["error"] == {"type": "not_found", "message": "no tier has it", "stage": "fetch"}


def test_engine_gpus_is_the_default_for_run_gpus(tmp_path, monkeypatch):
    """`engine.gpus` is read: it gives `vqf run` its rank count unless --gpus says otherwise."""
    import vqf.engine.launch as launch
    from vqf.cli import main

    asked = []
    monkeypatch.setattr(launch, "run_job", lambda recipe, ranks, status: asked.append(ranks))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"tables: {tmp_path / 'in.jsonl'}\noutputs: {tmp_path / 'out'}\n"
        "filters: {motion: {}}\nengine: {gpus: 3}\n"
    )
    for extra, ranks in (([], 3), (["--gpus", "2"], 2), (["--set", "engine.gpus=0"], 1)):
        assert main(["run", str(recipe), "--dashboard", "plain", *extra]) == 0
        assert asked.pop() == ranks
    with pytest.raises(ConfigError, match="engine.gpus = -1"):
        load_recipe(recipe, overrides=["engine.gpus=-1"])
