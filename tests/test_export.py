"""The cropped-video export: encoding, rotation, uploads to a loopback OSS server and folders."""

from __future__ import annotations

import shutil
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vqf.config import ExportConfig, OssConfig, StorageConfig, load_recipe
from vqf.engine.stats import RankStats
from vqf.errors import ConfigError
from vqf.video.export import ExportPool, encode_cropped, object_name
from vqf.video.probe import probe

BUCKET = "exports"
# displayed quadrants: top-left, top-right, bottom-left, bottom-right
QUADRANTS = {
    "tl": (220, 30, 30),
    "tr": (30, 200, 30),
    "bl": (30, 30, 220),
    "br": (220, 220, 30),
}


def make_quadrants(path: Path, *, rotation: int, width: int = 64, height: int = 48) -> Path:
    """A 1 s, 10 fps video whose *displayed* frame has four coloured quadrants; the stored
    frames are turned clockwise and the display matrix says to turn them back."""
    import av

    shown = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    shown[:h, :w], shown[:h, w:] = QUADRANTS["tl"], QUADRANTS["tr"]
    shown[h:, :w], shown[h:, w:] = QUADRANTS["bl"], QUADRANTS["br"]
    stored = np.ascontiguousarray(np.rot90(shown, -rotation // 90))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = stored.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def decoded(path: Path) -> tuple[list[float], list[np.ndarray], float, list[str]]:
    """Frame times, RGB frames, container duration (s) and stream codecs of a video."""
    import av

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        codecs = [s.codec_context.name for s in container.streams]
        duration = container.duration / 1e6
    return (
        [f.time for f in frames],
        [f.to_ndarray(format="rgb24") for f in frames],
        duration,
        codecs,
    )


def storage_for(oss_server=None, *, cache_dir: Path | None = None, **oss) -> StorageConfig:
    # the loopback endpoint names no region: V4 signing needs one
    fast = dict(
        retries=2, backoff_s=0.001, backoff_max_s=0.005, connect_timeout_s=1.0, region="cn-test"
    )
    if oss_server is not None:
        fast.update(
            endpoint=oss_server.endpoint, access_key_id="AKID-test", access_key_secret="secret"
        )
    return StorageConfig(
        oss=OssConfig(**{**fast, **oss}), cache_dir=str(cache_dir) if cache_dir else ""
    )


def pool_for(target: str, storage: StorageConfig, **config) -> ExportPool:
    return ExportPool(
        ExportConfig(enable=True, target=target, **config),
        storage=storage,
        stats=RankStats(),
        env={},
    )


def private_copy(src: Path, tmp_path: Path) -> Path:
    """A copy the test may delete (the factory's videos are shared)."""
    dest = tmp_path / "fetched" / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


# -- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("vfr", [False, True], ids=["cfr", "vfr"])
def test_encode_keeps_every_frame_and_its_time(tmp_path, video_factory, vfr):
    src = video_factory(seconds=1.5, fps=12, vfr=vfr, width=64, height=48, audio=True)
    out = tmp_path / "out.mp4"
    info = encode_cropped(src, out, crop=(5, 3, 42, 40), rotation=0, codec="libx264", crf=23)
    assert (info["width"], info["height"]) == (36, 36)  # 37x37 rounded inwards to even
    assert info["bytes"] == out.stat().st_size and info["audio"] is True
    src_times, _, src_duration, _ = decoded(src)
    times, frames, duration, codecs = decoded(out)
    assert info["frames"] == len(frames) == len(src_times) == 18
    np.testing.assert_allclose(times, src_times, atol=1e-4)
    assert abs(duration - src_duration) <= 1 / 12
    assert frames[0].shape == (36, 36, 3)
    assert codecs == ["h264", "aac"]
    assert probe(out).rotation == 0  # the pixels are upright: no display matrix to apply


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_crop_is_taken_from_the_displayed_frame(tmp_path, rotation):
    src = make_quadrants(tmp_path / "src.mp4", rotation=rotation)
    assert probe(src).rotation == rotation
    # the right 48 of 64 displayed columns: a 16-column strip of the left quadrants, then
    # the right quadrants
    info = encode_cropped(
        src, tmp_path / "out.mp4", crop=(16, 0, 64, 48), rotation=rotation, codec="libx264", crf=18
    )
    assert (info["width"], info["height"]) == (48, 48)
    _, frames, _, _ = decoded(tmp_path / "out.mp4")
    picture = frames[len(frames) // 2].astype(int)
    for name, (x, y) in {"tl": (8, 12), "tr": (32, 12), "bl": (8, 36), "br": (32, 36)}.items():
        assert np.abs(picture[y, x] - QUADRANTS[name]).max() < 40, (name, picture[y, x])


def test_crop_outside_the_frame_is_refused_and_leaves_no_file(tmp_path, video_factory):
    from vqf.video.export import ExportError

    src = video_factory(width=64, height=48, rotation=90)
    out = tmp_path / "out.mp4"
    # 48 x 64 fits the stored frame, not the displayed 64 x 48 one
    with pytest.raises(ExportError, match="displayed 64x48"):
        encode_cropped(src, out, crop=(0, 0, 48, 64), rotation=90, codec="libx264", crf=23)
    assert not out.exists()


def test_object_names_are_safe_and_distinct():
    assert object_name("clip_01.a") == "clip_01.a.mp4"
    assert object_name("a/b c").startswith("a_b_c-") and object_name("a/b c").endswith(".mp4")
    assert object_name("a/b c") != object_name("a_b_c")
    assert object_name("../../etc") not in ("../../etc.mp4", "etc.mp4")
    assert "/" not in object_name("../../etc") and object_name("..") != ".mp4"


# -- the pool and its uploads ------------------------------------------------------------------


def test_export_is_uploaded_to_oss_under_the_video_id(tmp_path, oss_server, video_factory):
    src = private_copy(video_factory(seconds=1.0, fps=10, width=64, height=48), tmp_path)
    cache = tmp_path / "cache"
    pool = pool_for(f"oss://{BUCKET}/crops/", storage_for(oss_server, cache_dir=cache))
    try:
        future = pool.submit(src, video_id="vid 7", crop=(0, 0, 33, 48), rotation=0)
        src.unlink()  # the engine releases its cached copy as soon as submit returns
        result = future.result(timeout=60)
    finally:
        pool.close()
    key = f"crops/{object_name('vid 7')}"
    assert "error" not in result, result
    assert result["url"] == f"oss://{BUCKET}/{key}"
    assert (result["width"], result["height"], result["frames"]) == (32, 48, 10)
    stored = oss_server.objects[(BUCKET, key)].data
    assert len(stored) == result["bytes"]
    (tmp_path / "got.mp4").write_bytes(stored)
    times, frames, _, _ = decoded(tmp_path / "got.mp4")
    assert len(frames) == 10 and frames[0].shape == (48, 32, 3)
    np.testing.assert_allclose(times, np.arange(10) / 10, atol=1e-4)
    assert pool.stats.counters["exports_ok"] == 1
    assert list((cache / "export").iterdir()) == []


def test_upload_is_retried_after_two_500s(tmp_path, oss_server, video_factory):
    src = video_factory(width=64, height=48)
    oss_server.fail_next(2, status=500, method="PUT")
    with pool_for(f"oss://{BUCKET}/x", storage_for(oss_server)) as pool:
        result = pool.submit(src, video_id="v1", crop=(0, 0, 64, 48), rotation=0).result(60)
    assert "error" not in result, result
    assert result["url"] == f"oss://{BUCKET}/x/v1.mp4"
    assert len(oss_server.requests_for("x/v1.mp4", "PUT")) == 3
    assert (BUCKET, "x/v1.mp4") in oss_server.objects


def test_upload_that_keeps_failing_is_an_error_result(tmp_path, oss_server, video_factory):
    src = video_factory(width=64, height=48)
    oss_server.fail_next(100, status=500, method="PUT")
    cache = tmp_path / "cache"
    pool = pool_for(f"oss://{BUCKET}/x/", storage_for(oss_server, cache_dir=cache))
    try:
        result = pool.submit(src, video_id="v1", crop=(0, 0, 64, 48), rotation=0).result(60)
        assert list(pool.directory.iterdir()) == []
    finally:
        pool.close()
    assert result["error"]["type"] == "upload_failed"
    assert "500" in result["error"]["message"] and "secret" not in result["error"]["message"]
    assert len(oss_server.requests_for("x/v1.mp4", "PUT")) == 3  # 1 + storage.oss.retries
    assert pool.stats.counters["exports_failed"] == 1 and pool.stats.counters["exports_ok"] == 0
    assert src.is_file()  # the caller's file is never touched


def test_local_folder_target(tmp_path, video_factory):
    src = video_factory(width=64, height=48, rotation=90)
    folder = tmp_path / "out"
    with pool_for(str(folder), storage_for()) as pool:
        result = pool.submit(src, video_id="a/b", crop=(10, 10, 50, 40), rotation=90).result(60)
        work = pool.directory
        assert list(work.iterdir()) == []
    assert "error" not in result, result
    assert result["url"] == str(folder / object_name("a/b"))
    assert [p.name for p in folder.iterdir()] == [object_name("a/b")]  # no partial files
    _, frames, _, _ = decoded(Path(result["url"]))
    assert len(frames) == 10 and frames[0].shape == (30, 40, 3)
    assert not work.exists()  # a private work folder goes with the pool


def test_bad_crop_and_missing_source_are_error_results(tmp_path, video_factory):
    src = video_factory(width=64, height=48)
    with pool_for(str(tmp_path / "out"), storage_for()) as pool:
        bad = pool.submit(src, video_id="v", crop=(0, 0, 65, 48), rotation=0).result(60)
        gone = pool.submit(tmp_path / "nope.mp4", video_id="w", crop=(0, 0, 8, 8), rotation=0)
        assert list(pool.directory.iterdir()) == []
    assert bad["error"]["type"] == "bad_crop"
    assert gone.result(60)["error"]["type"] == "source_failed"
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert pool.stats.counters["exports_failed"] == 2


def test_source_on_another_file_system_is_copied(tmp_path, video_factory, monkeypatch):
    import os

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    src = private_copy(video_factory(width=64, height=48), tmp_path)
    with pool_for(str(tmp_path / "out"), storage_for()) as pool:
        future = pool.submit(src, video_id="v", crop=(0, 0, 64, 48), rotation=0)
        src.unlink()
        result = future.result(60)
    assert "error" not in result, result
    assert pool.stats.counters["export_source_copies"] == 1


def test_submit_blocks_when_the_queue_is_full(tmp_path, video_factory):
    src = video_factory(width=64, height=48)
    pool = pool_for(str(tmp_path / "out"), storage_for(), workers=1, queue=1)
    release = threading.Event()
    upload = pool.uploader.upload

    def held_upload(local, *, video_id):
        release.wait(30)
        return upload(local, video_id=video_id)

    pool.uploader.upload = held_upload
    futures = [pool.submit(src, video_id="a", crop=(0, 0, 64, 48), rotation=0)]
    # "a" holds the only worker; "b" waits in the queue once the worker has taken "a"
    futures.append(pool.submit(src, video_id="b", crop=(0, 0, 64, 48), rotation=0))
    third = threading.Thread(
        target=lambda: futures.append(
            pool.submit(src, video_id="c", crop=(0, 0, 64, 48), rotation=0)
        )
    )
    third.start()
    third.join(1.0)
    blocked = third.is_alive()
    release.set()
    third.join(30)
    pool.close()
    assert blocked
    assert [f.result(60).get("error") for f in futures] == [None, None, None]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]


# -- configuration -----------------------------------------------------------------------------


def recipe_with(tmp_path: Path, filters: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"filters:\n{filters}")
    return path


def test_recipe_key_builds_the_export_config(tmp_path):
    path = recipe_with(
        tmp_path,
        "  abnormal_region:\n"
        "    export: {enable: true, target: 'oss://b/p/', codec: libx265, crf: 28}\n",
    )
    export = load_recipe(path).filters["abnormal_region"].export
    assert export == ExportConfig(enable=True, target="oss://b/p/", codec="libx265", crf=28)


def test_export_on_another_filter_is_refused(tmp_path):
    path = recipe_with(tmp_path, "  vfx:\n    export: {enable: true, target: /tmp/x}\n")
    with pytest.raises(ConfigError, match=r"filters\.vfx\.export\.enable"):
        load_recipe(path)


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(enable=True), "export.target is empty"),
        (dict(crf=52), "export.crf = 52"),
        (dict(crf=-1), "export.crf = -1"),
        (dict(target="s3://b/p/"), "not a bucket or a folder"),
        (dict(workers=0), "at least 1"),
    ],
)
def test_bad_export_values_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match) as info:
        ExportConfig(**fields)
    assert info.value.hint


def test_unknown_codec_is_refused_when_the_pool_starts(tmp_path):
    with pytest.raises(ConfigError, match="h264_nvenc") as info:
        pool_for(str(tmp_path), storage_for(), codec="h264_nvenc")
    assert "libx264" in info.value.hint


def test_oss_target_without_credentials_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="OSS") as info:
        pool_for("oss://b/p/", storage_for())
    assert "OSS_ACCESS_KEY_ID" in info.value.hint
