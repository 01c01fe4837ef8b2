"""Remote checkpoints from a loopback OSS server: models and heads, files and folders with and
without a trailing '/', fetched once per node, every other rank reading the leader's copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vqf.config import FilterConfig, ModelConfig, OssConfig, Recipe, StorageConfig
from vqf.errors import StorageError
from vqf.models.remote import localize_checkpoints, remote_checkpoints
from vqf.storage import Fetcher

BACKBONE = {"ckpt/config.json": b"{}", "ckpt/model.safetensors": os.urandom(3000)}
ROV = {"rov/config.json": b'{"rov": 1}', "rov/sub/weights.bin": b"w"}
VFX_HEAD = os.urandom(700)
SIMCAM_HEAD = os.urandom(500)


@pytest.fixture
def fetcher(oss_server, tmp_path) -> Fetcher:
    oss = OssConfig(
        endpoint=oss_server.endpoint,
        region="cn-test",  # the loopback endpoint names no region: V4 signing needs one
        access_key_id="id",
        access_key_secret="secret",
        retries=0,
        backoff_s=0.001,
        timeout_s=5.0,
    )
    return Fetcher(StorageConfig(oss=oss, cache_dir=str(tmp_path / "cache")), env={})


@pytest.fixture
def stored(oss_server):
    for key, data in {**BACKBONE, **ROV}.items():
        oss_server.put("models", key, data)
    oss_server.put("models", "heads/vfx.safetensors", VFX_HEAD)
    oss_server.put("models", "heads/simcam.safetensors", SIMCAM_HEAD)
    return oss_server


def recipe(**filters: FilterConfig) -> Recipe:
    return Recipe(
        models={
            "backbone": ModelConfig(path="oss://models/ckpt"),  # a folder, no trailing '/'
            "rov_backbone": ModelConfig(path="oss://models/rov/"),
            "unused": ModelConfig(path="oss://models/never/"),
            "random": ModelConfig(path="oss://models/never-either/", init="random"),
        },
        filters=filters
        or {
            "vfx": FilterConfig(head="oss://models/heads/vfx.safetensors"),  # a single file
            "simcam": FilterConfig(head="oss://models/heads/simcam.safetensors/"),  # a '/' too
            "rov": FilterConfig(head="/local/rov_head.safetensors"),
            "low_quality": FilterConfig(model="random", head="oss://models/heads/none"),
            "borders": FilterConfig(),
        },
    )


def test_the_recipe_names_every_remote_checkpoint_an_enabled_filter_loads():
    assert remote_checkpoints(recipe()) == [
        "oss://models/ckpt",
        "oss://models/rov/",
        "oss://models/heads/vfx.safetensors",
        "oss://models/heads/simcam.safetensors/",
    ]


def test_files_and_folders_land_once_per_node_and_every_rank_resolves_them(
    stored, fetcher, tmp_path
):
    root = tmp_path / "checkpoints"
    waits = []
    resolve = localize_checkpoints(
        recipe(), fetcher=fetcher, root=root, leader=True, wait=lambda: waits.append("leader")
    )
    backbone = resolve("oss://models/ckpt")
    assert backbone == resolve("oss://models/ckpt/")  # one copy for both spellings
    assert (backbone / "model.safetensors").read_bytes() == BACKBONE["ckpt/model.safetensors"]
    rov = resolve("oss://models/rov/")
    assert (rov / "sub" / "weights.bin").read_bytes() == b"w"
    assert resolve("oss://models/heads/vfx.safetensors").read_bytes() == VFX_HEAD
    simcam = resolve("oss://models/heads/simcam.safetensors/")
    assert simcam.is_file() and simcam.read_bytes() == SIMCAM_HEAD
    assert resolve("/local/rov_head.safetensors") == Path("/local/rov_head.safetensors")
    assert not [p for _, p, _ in stored.requests if "never" in p or "none" in p]  # not needed
    for key in [*BACKBONE, *ROV, "heads/vfx.safetensors", "heads/simcam.safetensors"]:
        assert len(stored.requests_for(key, "GET")) == 1, key

    before = len(stored.requests)
    others = [
        localize_checkpoints(
            recipe(), fetcher=fetcher, root=root, leader=False, wait=lambda: waits.append("rank")
        )
        for _ in range(3)
    ]
    again = localize_checkpoints(
        recipe(), fetcher=fetcher, root=root, leader=True, wait=lambda: None
    )
    assert len(stored.requests) == before  # the node's copy serves every rank and a restart
    for other in [*others, again]:
        assert other("oss://models/ckpt/") == backbone
        assert other("oss://models/heads/simcam.safetensors") == simcam
    assert waits == ["leader", "rank", "rank", "rank"]
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".complete")) == sorted(
        p.name + ".complete" for p in root.iterdir() if not p.name.endswith(".complete")
    )


def test_a_rank_whose_leader_fetched_nothing_names_the_checkpoint(stored, fetcher, tmp_path):
    with pytest.raises(StorageError, match="oss://models/ckpt was not fetched") as info:
        localize_checkpoints(
            recipe(), fetcher=fetcher, root=tmp_path / "empty", leader=False, wait=lambda: None
        )
    assert "storage.cache_dir" in info.value.hint


def test_a_missing_checkpoint_names_both_forms_tried_and_leaves_no_partial_copy(
    stored, fetcher, tmp_path
):
    root = tmp_path / "checkpoints"
    bad = recipe(vfx=FilterConfig(head="oss://models/heads/gone.safetensors"))
    with pytest.raises(StorageError) as info:
        localize_checkpoints(bad, fetcher=fetcher, root=root, leader=True, wait=lambda: None)
    message = str(info.value)
    assert "as oss://models/heads/gone.safetensors:" in message
    assert "as oss://models/heads/gone.safetensors/:" in message
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left
    assert not [m for m in root.glob("*.complete") if "gone" in m.read_text()]
