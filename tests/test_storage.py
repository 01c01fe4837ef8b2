"""Storage tiers and the fetcher, against real files, a loopback OSS server and real oss2."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from vqf.config import GB, MB, OssConfig, StorageConfig
from vqf.errors import ErrorType, Stage, StorageError, VideoError
from vqf.schema import InputRow
from vqf.storage import TIERS, Fetcher, Located, Miss, Tier, add_secret, redact

BUCKET = "videos"
KEY_ID = "AKID-PLANTED-7f3a91"
KEY_SECRET = "SECRET-PLANTED-c0ffee42"
REGION = "cn-test"


def row(path: str, *, bucket: str = BUCKET, **info) -> InputRow:
    return InputRow(video_id="v1", oss_bucket=bucket, video_path=path, info=info)


def oss_config(endpoint: str, **overrides) -> OssConfig:
    fast = dict(
        endpoint=endpoint,
        access_key_id=KEY_ID,
        access_key_secret=KEY_SECRET,
        retries=2,
        backoff_s=0.001,
        backoff_max_s=0.005,
        connect_timeout_s=1.0,
        timeout_s=5.0,
        region=REGION,  # a loopback endpoint names no region; V4 signatures need one
    )
    return OssConfig(**{**fast, **overrides})


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_fetcher(oss_server, cache_dir):
    """A Fetcher on the loopback server with tiny backoffs; keywords override storage.*."""

    def make(*, oss: dict | None = None, **storage) -> Fetcher:
        config = StorageConfig(
            oss=oss_config(oss_server.endpoint, **(oss or {})), cache_dir=str(cache_dir)
        )
        return Fetcher(replace(config, **storage), env={})

    return make


def error_of(call) -> VideoError:
    with pytest.raises(VideoError) as info:
        call()
    assert info.value.stage is Stage.FETCH
    return info.value


def put_file(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def wait_for(predicate, *, limit_s: float = 10.0) -> None:
    """Polls until `predicate()` holds; fails the test if it never does."""
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            pytest.fail("condition never became true")
        time.sleep(0.01)


# -- a hit in each tier ----------------------------------------------------------------------


def test_cpfs_hit_returns_the_mounted_file_itself(tmp_path, make_fetcher):
    video = put_file(tmp_path / "cpfs", f"{BUCKET}/a/v.mp4", b"cpfs bytes")
    fetcher = make_fetcher(cpfs_root=str(tmp_path / "cpfs"))
    with fetcher.fetch(row("a/v.mp4")) as got:
        assert (got.tier, got.temporary, got.size) == ("cpfs", False, 10)
        assert got.path.read_bytes() == b"cpfs bytes"
        assert got.uri == f"oss://{BUCKET}/a/v.mp4"
    assert video.exists(), "a local tier must never delete the source"


def test_alluxio_is_used_only_when_the_row_asks(tmp_path, make_fetcher):
    put_file(tmp_path / "alluxio", f"{BUCKET}/v.mp4", b"alluxio")
    fetcher = make_fetcher(alluxio_root=str(tmp_path / "alluxio"))
    with fetcher.fetch(row("v.mp4", use_alluxio=True)) as got:
        assert got.tier == "alluxio" and got.path.read_bytes() == b"alluxio"
    err = error_of(lambda: fetcher.fetch(row("v.mp4")))
    assert err.type is ErrorType.NOT_FOUND
    assert "alluxio: not applicable" in err.message


def test_oss_hit_downloads_into_the_cache_and_release_deletes_it(
    oss_server, make_fetcher, cache_dir
):
    data = os.urandom(100_000)
    oss_server.put(BUCKET, "clips/v 1.mp4", data)
    fetcher = make_fetcher()
    with fetcher.fetch(row("clips/v 1.mp4")) as got:
        assert (got.tier, got.temporary, got.size) == ("oss", True, len(data))
        assert got.path.parent == cache_dir and got.path.suffix == ".mp4"
        assert got.path.read_bytes() == data
        assert fetcher.cache_usage()["used_bytes"] == len(data)
    assert list(cache_dir.iterdir()) == []
    assert fetcher.cache_usage()["used_bytes"] == 0
    stats = fetcher.stats()["oss"]
    assert (stats["hits"], stats["bytes"]) == (1, len(data))


def test_local_paths_absolute_relative_to_root_and_file_uri(tmp_path, make_fetcher):
    video = put_file(tmp_path / "local", "sub/v.mp4", b"local")
    plain = make_fetcher()
    rooted = make_fetcher(local_root=str(tmp_path / "local"))
    for fetcher, path in [
        (plain, str(video)),
        (plain, video.as_uri()),
        (rooted, "sub/v.mp4"),
        (rooted, str(video)),
    ]:
        with fetcher.fetch(row(path, bucket="")) as got:
            assert got.tier == "local" and not got.temporary
            assert got.path.read_bytes() == b"local"


def test_http_url_is_downloaded_and_a_404_is_a_miss(oss_server, make_fetcher, cache_dir):
    oss_server.put("web", "v.mp4", b"over http")
    fetcher = make_fetcher()
    with fetcher.fetch(row(oss_server.url("web", "v.mp4"), bucket="")) as got:
        assert (got.tier, got.temporary) == ("http", True)
        assert got.path.read_bytes() == b"over http"
    assert list(cache_dir.iterdir()) == []
    err = error_of(lambda: fetcher.fetch(row(oss_server.url("web", "gone.mp4"), bucket="")))
    assert err.type is ErrorType.NOT_FOUND and "http: 404" in err.message


# -- order and misses ------------------------------------------------------------------------


def test_cpfs_miss_falls_through_to_oss(tmp_path, oss_server, make_fetcher):
    (tmp_path / "cpfs").mkdir()
    oss_server.put(BUCKET, "v.mp4", b"from oss")
    fetcher = make_fetcher(cpfs_root=str(tmp_path / "cpfs"))
    with fetcher.fetch(row("v.mp4")) as got:
        assert got.tier == "oss" and got.path.read_bytes() == b"from oss"
    stats = fetcher.stats()
    assert stats["cpfs"]["misses"] == 1 and stats["oss"]["hits"] == 1


def test_all_tiers_missing_gives_one_error_naming_each_tier(tmp_path, make_fetcher):
    (tmp_path / "cpfs").mkdir()
    fetcher = make_fetcher(cpfs_root=str(tmp_path / "cpfs"))
    err = error_of(lambda: fetcher.fetch(row("x/y.mp4")))
    assert err.type is ErrorType.NOT_FOUND
    message = err.message
    assert f"cpfs: no file {tmp_path / 'cpfs' / BUCKET / 'x/y.mp4'}" in message
    assert "alluxio: not configured" in message
    assert "oss: 404 NoSuchKey" in message
    assert "local: not applicable" in message
    assert "http: not applicable" in message
    assert failure_type(err) == "not_found"


def failure_type(err: VideoError) -> str:
    return err.to_dict()["type"]


# -- retries and failures --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_two_503s_then_success(oss_server, make_fetcher, method):
    oss_server.put(BUCKET, "v.mp4", b"after retries")
    oss_server.fail_next(2, status=503, key="v.mp4", method=method)
    with make_fetcher().fetch(row("v.mp4")) as got:
        assert got.path.read_bytes() == b"after retries"
    assert len(oss_server.requests_for("v.mp4", method)) == 3


def test_connection_reset_then_success(oss_server, make_fetcher):
    oss_server.put(BUCKET, "v.mp4", b"after a reset")
    oss_server.reset_next(1, key="v.mp4", method="GET")
    with make_fetcher().fetch(row("v.mp4")) as got:
        assert got.path.read_bytes() == b"after a reset"
    assert len(oss_server.requests_for("v.mp4", "GET")) == 2


def test_connection_refused_is_download_failed_after_retries(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = StorageConfig(oss=oss_config(f"http://127.0.0.1:{port}"), cache_dir=str(tmp_path))
    err = error_of(lambda: Fetcher(config, env={}).fetch(row("v.mp4")))
    assert err.type is ErrorType.DOWNLOAD_FAILED
    assert "after 3 attempts" in err.message and "Connection refused" in err.message


def test_reply_slower_than_the_timeout_is_timeout(oss_server, make_fetcher):
    oss_server.put(BUCKET, "v.mp4", b"slow")
    oss_server.delay_next(10, 2.0, key="v.mp4")
    fetcher = make_fetcher(oss={"timeout_s": 0.2, "retries": 1})
    err = error_of(lambda: fetcher.fetch(row("v.mp4")))
    assert err.type is ErrorType.TIMEOUT
    assert len(oss_server.requests_for("v.mp4")) == 2


def test_download_exhausting_retries_leaves_no_partial_file(oss_server, make_fetcher, cache_dir):
    oss_server.put(BUCKET, "v.mp4", b"x" * 1000)
    oss_server.fail_next(10, status=500, key="v.mp4", method="GET")
    fetcher = make_fetcher()
    err = error_of(lambda: fetcher.fetch(row("v.mp4")))
    assert err.type is ErrorType.DOWNLOAD_FAILED and "500 InternalError" in err.message
    assert list(cache_dir.iterdir()) == []
    assert fetcher.cache_usage()["used_bytes"] == 0


def test_object_over_max_size_is_refused_without_downloading(oss_server, make_fetcher):
    oss_server.put(BUCKET, "big.mp4", b"x" * 4096)
    err = error_of(lambda: make_fetcher(max_video_mb=2048 / MB).fetch(row("big.mp4")))
    assert err.type is ErrorType.TOO_LARGE and "max_video_mb" in err.hint
    assert oss_server.requests_for("big.mp4", "GET") == []
    err = error_of(lambda: make_fetcher(cache_budget_gb=2048 / GB).fetch(row("big.mp4")))
    assert err.type is ErrorType.TOO_LARGE and "cache_budget_gb" in err.hint
    assert oss_server.requests_for("big.mp4", "GET") == []


def test_large_object_comes_in_parallel_ranged_parts(oss_server, make_fetcher):
    data = os.urandom(1_100_000)
    oss_server.put(BUCKET, "big.mp4", data)
    # One part fails once: only that part is fetched again.
    oss_server.fail_next(1, status=503, key="big.mp4", method="GET")
    fetcher = make_fetcher(oss={"part_size_mb": 0.25, "parallel_min_mb": 0.5, "parallel_parts": 3})
    with fetcher.fetch(row("big.mp4")) as got:
        assert got.path.read_bytes() == data
    gets = oss_server.requests_for("big.mp4", "GET")
    ranges = {headers.get("Range") for _, _, headers in gets}
    part = int(0.25 * MB)
    assert ranges == {
        f"bytes={s}-{min(s + part, len(data)) - 1}" for s in range(0, len(data), part)
    }
    assert len(gets) == len(ranges) + 1


# -- paths that would leave their root -------------------------------------------------------


def test_dot_dot_paths_are_refused(tmp_path, make_fetcher):
    (tmp_path / "cpfs").mkdir()
    (tmp_path / "local").mkdir()
    put_file(tmp_path, "secret.txt", b"not yours")
    cases = [
        (make_fetcher(cpfs_root=str(tmp_path / "cpfs")), row("../../etc/passwd")),
        (make_fetcher(local_root=str(tmp_path / "local")), row("../../etc/passwd", bucket="")),
        (make_fetcher(local_root=str(tmp_path / "local")), row("../secret.txt", bucket="")),
        (
            make_fetcher(local_root=str(tmp_path / "local")),
            row(str(tmp_path / "secret.txt"), bucket=""),
        ),
        (make_fetcher(), row("a/../../b.mp4")),
    ]
    for fetcher, bad in cases:
        err = error_of(lambda f=fetcher, r=bad: f.fetch(r))
        assert err.type is ErrorType.PATH_REFUSED, bad.video_path


def test_symlink_escaping_the_root_is_refused(tmp_path, make_fetcher):
    outside = put_file(tmp_path, "outside/v.mp4", b"outside")
    (tmp_path / "cpfs" / BUCKET).mkdir(parents=True)
    (tmp_path / "cpfs" / BUCKET / "link").symlink_to(outside.parent)
    err = error_of(lambda: make_fetcher(cpfs_root=str(tmp_path / "cpfs")).fetch(row("link/v.mp4")))
    assert err.type is ErrorType.PATH_REFUSED and "outside its root" in err.message


# -- the cache budget ------------------------------------------------------------------------


def test_budget_makes_the_second_fetch_wait_for_the_first_release(
    oss_server, make_fetcher, cache_dir
):
    size = 300_000
    oss_server.put(BUCKET, "a.mp4", b"a" * size)
    oss_server.put(BUCKET, "b.mp4", b"b" * size)
    fetcher = make_fetcher(cache_budget_gb=1.5 * size / GB)
    first = fetcher.fetch(row("a.mp4"))
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(fetcher.fetch, row("b.mp4"))
        wait_for(lambda: oss_server.requests_for("b.mp4", "HEAD"))
        wait_for(lambda: fetcher.cache_usage()["waits"] == 1)
        assert not second.done()
        assert oss_server.requests_for("b.mp4", "GET") == []
        assert [p.name for p in cache_dir.iterdir()] == [first.path.name]
        first.release()
        with second.result(timeout=10) as got:
            assert got.path.read_bytes() == b"b" * size
            assert [p.name for p in cache_dir.iterdir()] == [got.path.name]
    usage = fetcher.cache_usage()
    assert usage["peak_bytes"] == size and usage["used_bytes"] == 0
    assert list(cache_dir.iterdir()) == []


def test_concurrent_fetches_are_all_counted(oss_server, make_fetcher, cache_dir):
    for i in range(8):
        oss_server.put(BUCKET, f"{i}.mp4", bytes([i]) * 1000)
    fetcher = make_fetcher()

    def fetch(i):
        with fetcher.fetch(row(f"{i}.mp4")) as got:
            return got.path.read_bytes() == bytes([i]) * 1000

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(fetch, range(8)))
    assert fetcher.stats()["oss"]["hits"] == 8 and fetcher.stats()["oss"]["bytes"] == 8000
    assert list(cache_dir.iterdir()) == []


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_never_appear_in_errors_stats_or_logs(oss_server, make_fetcher, caplog):
    caplog.set_level(logging.DEBUG)
    oss_server.put(BUCKET, "v.mp4", b"x")
    fetcher = make_fetcher(oss={"retries": 0, "timeout_s": 0.2})
    plans = [
        (lambda: oss_server.fail_next(1, status=403, key="v.mp4"), "v.mp4"),  # echoes the key id
        (lambda: oss_server.fail_next(1, status=503, key="v.mp4"), "v.mp4"),
        (lambda: oss_server.delay_next(1, 1.0, key="v.mp4"), "v.mp4"),
        (lambda: None, "missing.mp4"),
    ]
    errors = []
    for plan, key in plans:
        plan()
        errors.append(error_of(lambda k=key: fetcher.fetch(row(k))))
    assert [e.type for e in errors[:3]] == [
        ErrorType.DOWNLOAD_FAILED,
        ErrorType.DOWNLOAD_FAILED,
        ErrorType.TIMEOUT,
    ]
    assert "***" in errors[0].message  # the echoed key id was there, and masked
    text = " ".join(f"{e} {e.to_dict()}" for e in errors) + repr(fetcher.stats()) + caplog.text
    assert KEY_ID not in text and KEY_SECRET not in text
    # oss2 did log the key id (in the V4 credential), masked
    assert "'authorization': 'OSS4-HMAC-SHA256 Credential=***/" in caplog.text


def test_redact_masks_registered_secrets():
    add_secret("hunter2-secret")
    assert redact("key=hunter2-secret, again hunter2-secret") == "key=***, again ***"
    assert redact("nothing here") == "nothing here"


# -- model files, pickling, user tiers -------------------------------------------------------


def test_fetch_uri_downloads_a_prefix_and_a_single_file(tmp_path, oss_server, make_fetcher):
    files = {
        "ckpt/config.json": b"{}",
        "ckpt/model.safetensors": os.urandom(5000),
        "ckpt/sub/x.bin": b"x",
    }
    for key, data in files.items():
        oss_server.put("models", key, data)
    oss_server.put("models", "ckptother/y.bin", b"not under the prefix")
    fetcher = make_fetcher()
    dest = fetcher.fetch_uri("oss://models/ckpt/", dest=tmp_path / "ckpt")
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == {k[len("ckpt/") :]: v for k, v in files.items()}
    single = fetcher.fetch_uri("oss://models/ckpt/config.json", dest=tmp_path / "c.json")
    assert single == tmp_path / "c.json" and single.read_bytes() == b"{}"
    local = fetcher.fetch_uri(str(single), dest=tmp_path / "unused")
    assert local == single and not (tmp_path / "unused").exists()
    with pytest.raises(StorageError, match="oss: no objects under"):
        fetcher.fetch_uri("oss://models/nothing/", dest=tmp_path / "n")


def test_fetcher_survives_pickling(oss_server, make_fetcher):
    oss_server.put(BUCKET, "v.mp4", b"pickled")
    fetcher = pickle.loads(pickle.dumps(make_fetcher()))
    with fetcher.fetch(row("v.mp4")) as got:
        assert got.path.read_bytes() == b"pickled"


def test_credentials_come_from_the_environment(oss_server, tmp_path):
    oss_server.put(BUCKET, "v.mp4", b"env")
    env = {
        "OSS_ENDPOINT": oss_server.endpoint,
        "OSS_REGION": REGION,
        "OSS_ACCESS_KEY_ID": KEY_ID,
        "OSS_ACCESS_KEY_SECRET": KEY_SECRET,
    }
    config = StorageConfig(cache_dir=str(tmp_path))
    with Fetcher(config, env=env).fetch(row("v.mp4")) as got:
        assert got.tier == "oss"
    err = error_of(lambda: Fetcher(config, env={}).fetch(row("v.mp4")))
    assert "oss: not configured: no endpoint (OSS_ENDPOINT)" in err.message


@TIERS.register("test-memory")
class MemoryTier(Tier):
    """A user-added tier: objects kept in a dict."""

    name = "test-memory"
    blobs = {"mem://a.mp4": b"from memory"}

    def is_available(self) -> bool:
        return True

    def is_applicable(self, row_or_uri) -> bool:
        return str(getattr(row_or_uri, "uri", row_or_uri)).startswith("mem://")

    def fetch(self, target, *, cache, max_bytes) -> Located:
        if target.uri not in self.blobs:
            raise Miss(f"no blob {target.uri}")
        path = Path(cache.directory) / "mem.mp4"
        path.write_bytes(self.blobs[target.uri])
        return Located(path, path.stat().st_size, True, release=path.unlink)


def test_a_registered_user_tier_is_tried_in_the_configured_order(make_fetcher):
    fetcher = make_fetcher(tiers=("test-memory", "local", "http"))
    with fetcher.fetch(row("mem://a.mp4", bucket="")) as got:
        assert got.tier == "test-memory" and got.path.read_bytes() == b"from memory"
    assert not got.path.exists()
    err = error_of(lambda: fetcher.fetch(row("mem://b.mp4", bucket="")))
    assert "test-memory: no blob mem://b.mp4" in err.message


def test_http_object_over_max_size_is_refused_from_its_head(oss_server, make_fetcher):
    oss_server.put("web", "big.mp4", b"x" * 4096)
    fetcher = make_fetcher(max_video_mb=2048 / MB)
    err = error_of(lambda: fetcher.fetch(row(oss_server.url("web", "big.mp4"), bucket="")))
    assert err.type is ErrorType.TOO_LARGE
    assert oss_server.requests_for("big.mp4", "GET") == []


# -- request signing ---------------------------------------------------------------------------


def test_requests_are_signed_with_v4_by_default(oss_server, make_fetcher):
    import re

    oss_server.put(BUCKET, "clips/v4.mp4", b"signed")
    with make_fetcher().fetch(row("clips/v4.mp4")) as got:
        assert got.path.read_bytes() == b"signed"
    requests = oss_server.requests_for("clips/v4.mp4")
    assert [m for m, _, _ in requests] == ["HEAD", "GET"]
    for _, _, headers in requests:
        auth = headers["Authorization"]
        date = headers["X-Oss-Date"]  # 20260101T120000Z, the time the signature covers
        assert re.fullmatch(r"\d{8}T\d{6}Z", date)
        assert re.fullmatch(
            rf"OSS4-HMAC-SHA256 Credential={KEY_ID}/{date[:8]}/{REGION}/oss/aliyun_v4_request,"
            r" Signature=[0-9a-f]{64}",
            auth,
        ), auth
        assert headers["X-Oss-Content-Sha256"] == "UNSIGNED-PAYLOAD"
        assert KEY_SECRET not in " ".join(headers.values())
    print(f"Authorization received: {requests[0][2]['Authorization']}")


def test_v1_signatures_only_when_the_recipe_asks(oss_server, make_fetcher):
    import re

    oss_server.put(BUCKET, "v1.mp4", b"old scheme")
    with make_fetcher(oss={"signature": "v1", "region": ""}).fetch(row("v1.mp4")) as got:
        assert got.path.read_bytes() == b"old scheme"
    for _, _, headers in oss_server.requests_for("v1.mp4"):
        assert re.fullmatch(rf"OSS {KEY_ID}:[A-Za-z0-9+/=]+", headers["Authorization"])
        assert "X-Oss-Date" not in headers


def test_v4_needs_a_region_named_or_derived_from_the_endpoint(oss_server, make_fetcher):
    from vqf.storage.oss import region_of

    assert region_of("oss-cn-hangzhou.aliyuncs.com") == "cn-hangzhou"
    assert region_of("https://oss-cn-hangzhou-internal.aliyuncs.com") == "cn-hangzhou"
    assert region_of("http://videos.oss-ap-southeast-1.aliyuncs.com:80/") == "ap-southeast-1"
    assert region_of("https://oss-accelerate.aliyuncs.com") == ""
    assert region_of("https://oss-accelerate-overseas.aliyuncs.com") == ""
    assert region_of("http://127.0.0.1:9000") == "" and region_of("cdn.example.com") == ""
    oss_server.put(BUCKET, "v.mp4", b"x")
    err = error_of(lambda: make_fetcher(oss={"region": ""}).fetch(row("v.mp4")))
    assert "no region for V4 signatures (storage.oss.region or OSS_REGION" in err.message
    assert oss_server.requests_for("v.mp4") == []  # nothing was sent unsigned or mis-signed
    # OSS_REGION fills in when the recipe names none.
    config = StorageConfig(oss=oss_config(oss_server.endpoint, region=""))
    tier = TIERS.get("oss")(config, env={"OSS_REGION": "cn-shanghai"})
    assert tier.region == "cn-shanghai" and tier.is_available()
