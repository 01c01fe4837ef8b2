"""Abnormal regions through `vqf run` with a detector that finds boxes (its class biases
raised, as real weights fire on watermarks and subtitles): plain, portrait and rotated videos
all succeed, boxes and crops lie in the displayed frame, the clips show the cropped region,
and the cropped-video export reaches the loopback OSS server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_engine import read_rows

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "pipelines" / "demo.yaml"
SIZE = 32
DETECT = 128
VIDEOS = {  # video_id: displayed width, height, rotation
    "plain": (160, 96, 0),
    "portrait": (96, 160, 0),
    "rotated": (160, 96, 90),
}


@pytest.fixture(scope="module")
def eager_detector(tmp_path_factory) -> Path:
    """A YOLOv8n whose class biases are raised: it reports boxes on any picture."""
    from vqf.models.detector import random_network, save_detector

    names = ("black_border", "watermark", "subtitle", "logo")
    config = tmp_path_factory.mktemp("yolo-config")
    network = random_network(names=names, seed=3, config_dir=config)
    head = network.model[-1]
    for branch in head.cv3:
        branch[-1].bias.data.fill_(6.0)
    return save_detector(
        network, tmp_path_factory.mktemp("det") / "detector.safetensors", names=names
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory, video_factory) -> Path:
    folder = tmp_path_factory.mktemp("abnormal")
    rows = []
    for vid, (w, h, rot) in VIDEOS.items():
        path = video_factory(
            codec="h264", width=w, height=h, seconds=2, rotation=rot, seed=len(rows)
        )
        rows.append({"video_id": vid, "video_path": str(path)})
    out = folder / "in.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def overrides(table: Path, out: Path, detector: Path, *extra: str) -> list[str]:
    return [
        f"tables={table}", f"outputs={out}", "demo.generate=false",
        f"models.detector.path={detector}", "models.detector.init=pretrained",
        f"sampling.height={SIZE}", f"sampling.width={SIZE}", f"sampling.detect_size={DETECT}",
        "filters.borders.enable=false", "filters.rov.enable=false",
        "filters.abnormal_region.options.max_boxes=1",
        "filters.abnormal_region.options.min_crop_area=0.0", *extra,
    ]  # fmt: skip


def rows_by_id(out: Path) -> dict[str, dict]:
    """The output rows by video_id."""
    return {r["video_id"]: r for r in read_rows(out)}


def test_boxes_and_crops_through_vqf_run(tmp_path, table, eager_detector):
    out = tmp_path / "out"
    args = []
    for item in overrides(table, out, eager_detector):
        args += ["--set", item]
    env = dict(os.environ, VQF_LOG="WARNING", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "vqf", "run", str(DEMO), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = rows_by_id(out)
    assert sorted(rows) == sorted(VIDEOS)
    for vid, (w, h, _) in VIDEOS.items():
        row = rows[vid]
        assert row["result_info"]["succeed"] == "true", row["result_info"]
        boxes = row["info"]["abnormal_region_info"]
        assert boxes, f"{vid}: the eager detector found nothing"
        for b in boxes:
            x0, y0, x1, y1 = b["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (vid, b)
        crop = row["info"]["abnormal_region_crop"]
        assert crop is not None, vid
        x0, y0, x1, y1 = crop
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (vid, crop)
        # the crop avoids the box it was made for
        bx0, by0, bx1, by1 = boxes[0]["box"]
        assert x1 <= bx0 + 1 or x0 >= bx1 - 1 or y1 <= by0 + 1 or y0 >= by1 - 1, (vid, crop)
        assert row["video_oss_url"] == row["video_oss_url"]  # export off: the input's URL
        assert not row["video_oss_url"].endswith(".crop.mp4")


def test_clips_show_the_cropped_region_of_the_displayed_frame(
    tmp_path, table, eager_detector, monkeypatch
):
    """The whole-video clip the backbone gets equals an independent crop + resize of PyAV's
    upright frames at the row's crop."""
    import av

    from vqf.config import load_recipe
    from vqf.engine.rank import Rank
    from vqf.models.bank import ModelBank

    seen: dict[int, list] = {}
    real = ModelBank.backbone

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def encode(self, clips):
            seen.setdefault(clips.shape[1], []).append(clips.clone())
            return self.inner.encode(clips)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(ModelBank, "backbone", lambda self, name: Recording(real(self, name)))
    rows = {}
    for vid in VIDEOS:
        one = tmp_path / f"{vid}.jsonl"
        line = next(x for x in table.read_text().splitlines() if json.loads(x)["video_id"] == vid)
        one.write_text(line + "\n")
        seen.clear()
        out = tmp_path / f"out-{vid}"
        recipe = load_recipe(DEMO, overrides=overrides(
            one, out, eager_detector, "filters.simcam.enable=false",
            "filters.low_quality.enable=false", "decode.prescale=0",
        ))  # fmt: skip
        Rank(recipe, rank=0, world_size=1, device="cpu").run()
        row = rows_by_id(out)[vid]
        rows[vid] = row
        x0, y0, x1, y1 = row["info"]["abnormal_region_crop"]
        (clip,) = seen[recipe.sampling.whole_frames]  # vfx reads the whole clip, alone
        path = json.loads(line)["video_path"]
        with av.open(path) as container:
            frames = [np.rot90(f.to_ndarray(format="rgb24"), f.rotation // 90)
                      for f in container.decode(video=0)]  # fmt: skip
        from vqf.video import make_plan, probe

        info = probe(path, sampling=recipe.sampling, decode=recipe.decode, device="cpu")
        plan = make_plan(info.timestamps, sampling=recipe.sampling, duration_s=info.duration_s)
        whole = plan.frame_indices(plan.clips_of("whole")[0])
        want = []
        for i in whole:
            a = np.ascontiguousarray(frames[i][y0:y1, x0:x1])
            t = torch.from_numpy(a).permute(2, 0, 1)[None].float()
            want.append(F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True)[0])
        want = torch.stack(want)
        mean = torch.tensor(recipe.sampling.mean).view(1, 3, 1, 1)
        std = torch.tensor(recipe.sampling.std).view(1, 3, 1, 1)
        got = (clip[0].float() * std + mean) * 255
        diff = (got - want)[..., 1:-1, 1:-1].abs()
        assert diff.mean().item() < 4.0, (vid, diff.mean().item())
        # and it is not the whole frame squeezed
        full = torch.stack([
            F.interpolate(torch.from_numpy(np.ascontiguousarray(frames[i])).permute(2, 0, 1)[None].float(),
                          size=(SIZE, SIZE), mode="bilinear", antialias=True)[0] for i in whole
        ])  # fmt: skip
        crop_area = (x1 - x0) * (y1 - y0) / (frames[0].shape[0] * frames[0].shape[1])
        if crop_area < 0.9:
            assert (got - full).abs().mean().item() > diff.mean().item()


def test_the_cropped_copy_is_exported_to_oss(
    tmp_path, table, eager_detector, oss_server, monkeypatch
):
    import av

    from vqf.config import load_recipe
    from vqf.engine.rank import Rank

    monkeypatch.setenv("OSS_ENDPOINT", oss_server.endpoint)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "test-key-secret")
    monkeypatch.setenv("OSS_REGION", "cn-test")  # V4 signing needs a region
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    recipe = load_recipe(DEMO, overrides=overrides(
        table, out, eager_detector, "filters.abnormal_region.export.enable=true",
        "filters.abnormal_region.export.target=oss://exports/crops/",
        f"storage.cache_dir={cache}",
    ))  # fmt: skip
    snap = Rank(recipe, rank=0, world_size=1, device="cpu").run()
    rows = rows_by_id(out)
    assert snap["counters"].get("exports_ok") == len(VIDEOS)
    for vid in VIDEOS:
        row = rows[vid]
        assert row["result_info"]["succeed"] == "true"
        export = row["info"]["abnormal_region_export"]
        assert row["video_oss_url"] == export["url"] and export["url"].startswith(
            "oss://exports/crops/"
        )
        key = export["url"].removeprefix("oss://exports/")
        data = oss_server.objects[("exports", key)].data
        local = tmp_path / f"{vid}.mp4"
        local.write_bytes(data)
        x0, y0, x1, y1 = row["info"]["abnormal_region_crop"]
        source = json.loads(next(x for x in table.read_text().splitlines() if vid in x))[
            "video_path"
        ]
        with av.open(str(local)) as c, av.open(source) as s:
            got = [f for f in c.decode(video=0)]
            want = [f for f in s.decode(video=0)]
            assert abs(got[0].width - (x1 - x0)) <= 1 and abs(got[0].height - (y1 - y0)) <= 1
            assert len(got) == len(want)
    # nothing left behind in the cache
    assert not [p for p in cache.rglob("*") if p.is_file()]
