"""A fetch runs within storage.timeout_s; the download budget is shared by a node's ranks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vqf import faults
from vqf.config import GB, StorageConfig
from vqf.errors import ConfigError, ErrorType, Stage, VideoError
from vqf.schema import InputRow
from vqf.storage import TIERS, Fetcher, Located, Tier
from vqf.storage.cache import node_share


@TIERS.register("test-stuck")
class StuckTier(Tier):
    """A tier whose download stops sending until `go` is set (a dead mount, a stalled peer)."""

    name = "test-stuck"
    go = threading.Event()

    def is_available(self) -> bool:
        return True

    def is_applicable(self, row_or_uri) -> bool:
        return str(getattr(row_or_uri, "uri", row_or_uri)).startswith("stuck://")

    def fetch(self, target, *, cache, max_bytes) -> Located:
        def write(path: Path) -> int:
            self.go.wait(30)
            path.write_bytes(b"x" * 1000)
            return 1000

        return cache.download(
            uri=target.uri, reserve_bytes=1000, timeout_s=5, suffix=".mp4", write=write
        )


def row(path: str, video_id: str = "v1") -> InputRow:
    return InputRow(video_id=video_id, oss_bucket="", video_path=path)


def wait_for(predicate, *, limit_s: float = 10.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < end, "the condition never held"
        time.sleep(0.02)


def test_a_fetch_past_its_deadline_is_a_timeout_and_its_late_download_is_released(tmp_path):
    StuckTier.go.clear()
    cache = tmp_path / "cache"
    config = StorageConfig(tiers=("test-stuck",), timeout_s=0.3, cache_dir=str(cache))
    fetcher = Fetcher(config, env={})
    start = time.monotonic()
    with pytest.raises(VideoError) as info:
        fetcher.fetch(row("stuck://a.mp4"))
    assert time.monotonic() - start < 5
    error = info.value
    assert error.type is ErrorType.TIMEOUT and error.stage is Stage.FETCH
    assert "stuck://a.mp4 ran past storage.timeout_s = 0.3s" in error.message
    assert fetcher.stuck() == 1 and fetcher.timeouts() == 1
    assert fetcher.cache_usage()["used_bytes"] == 1000  # the stuck download still holds it
    StuckTier.go.set()  # the mount comes back: nobody wants that file any more
    wait_for(lambda: fetcher.stuck() == 0)
    assert fetcher.cache_usage()["used_bytes"] == 0
    assert not list(cache.glob("vqf-*"))


def test_a_fetch_within_its_deadline_is_untouched(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video")
    fetcher = Fetcher(StorageConfig(timeout_s=5.0, cache_dir=str(tmp_path / "c")), env={})
    with fetcher.fetch(row(str(video))) as got:
        assert got.path == video and got.tier == "local"
    with pytest.raises(VideoError) as info:
        fetcher.fetch(row(str(tmp_path / "missing.mp4")))
    assert info.value.type is ErrorType.NOT_FOUND  # a tier's own failure comes through as is
    assert fetcher.stuck() == 0 and fetcher.timeouts() == 0


def test_the_fault_hook_at_fetch_runs_under_the_deadline(tmp_path, monkeypatch):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video")
    fetcher = Fetcher(StorageConfig(timeout_s=0.3, cache_dir=str(tmp_path / "c")), env={})
    faults.reset()
    monkeypatch.setenv("VQF_FAULT", "fetch:v1:hang,fetch:v2:raise")
    try:
        with pytest.raises(VideoError, match="ran past storage.timeout_s") as info:
            fetcher.fetch(row(str(video), "v1"))
        assert info.value.type is ErrorType.TIMEOUT
        with pytest.raises(faults.InjectedFault):
            fetcher.fetch(row(str(video), "v2"))
        with fetcher.fetch(row(str(video), "v3")) as got:
            assert got.path == video
    finally:
        faults.release_hangs()
    wait_for(lambda: fetcher.stuck() == 0)


def test_the_cache_budget_is_divided_among_the_ranks_of_a_node(tmp_path, monkeypatch):
    config = StorageConfig(cache_budget_gb=8.0, cache_dir=str(tmp_path))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert Fetcher(config, env={}).cache_usage()["budget_bytes"] == 8 * GB
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert Fetcher(config, env={}).cache_usage()["budget_bytes"] == 1 * GB
    assert node_share(100, env={"LOCAL_WORLD_SIZE": "3"}) == 33
    with pytest.raises(ConfigError, match="LOCAL_WORLD_SIZE = 'eight'"):
        node_share(100, env={"LOCAL_WORLD_SIZE": "eight"})
    with pytest.raises(ConfigError, match="must be at least 1"):
        node_share(100, env={"LOCAL_WORLD_SIZE": "0"})
