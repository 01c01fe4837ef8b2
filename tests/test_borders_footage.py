"""Borders on footage with title cards and fades: bars measured to the padded share, none
reported where the picture is full-frame, and a black video called blank.

The videos (tests/scenes.py) go through the real video plane: probe, plan, the detection
frames found by seeking (12 by default, spread over the video), letterboxed. Full-frame
trailers open and close on black title cards with a line of text and fade through black;
those frames are not picture and must not pass for bars.
"""

from __future__ import annotations

import pytest

from tests.scenes import HEIGHT, WIDTH, Footage, Join, Shot

SHOTS = (Shot("noise", 2, 3), Shot("gradient", 2, 4), Shot("subject", 2, 5))
JOINS = (Join("fade", 0.8, hold=0.2), Join("cut"))
FOOTAGE = {
    # name: (footage, bars the picture has in pixels)
    "full_frame_titles": Footage(SHOTS, JOINS, fps=25, title_s=1.0),
    "full_frame": Footage(SHOTS, JOINS, fps=25),
    "letterbox": Footage(SHOTS, JOINS, fps=25, bars={"top": 12, "bottom": 12}),
    "pillarbox": Footage(SHOTS, JOINS, fps=25, bars={"left": 20, "right": 20}),
    "windowbox": Footage(SHOTS, JOINS, fps=25, bars={"top": 8, "bottom": 8, "left": 16}),
    "letterbox_titles": Footage(SHOTS, JOINS, fps=25, bars={"top": 14, "bottom": 14}, title_s=0.8),
}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """name -> (footage, the borders row, the crop)."""
    from vqf.config import FilterConfig, Recipe, build
    from vqf.filters.borders import BordersFilter
    from vqf.video.plane import VideoPlane

    recipe = build(Recipe, {"sampling": {"height": 64, "width": 64, "detect_size": 480}}, "r")
    plane = VideoPlane(recipe=recipe, device="cpu")
    borders = BordersFilter(spec=FilterConfig())
    folder = tmp_path_factory.mktemp("borders")
    out = {}
    for name, footage in FOOTAGE.items():
        path = footage.write(folder / f"{name}.mp4")
        det = plane.detect_frames(plane.prepare(path, uri=str(path)))
        assert len(det.indices) == recipe.sampling.detect_frames == 12
        result = borders.detect(det.frames, letterbox=det.letterbox)
        out[name] = (footage, result.info["borders"], result.crop)
    plane.close()
    return out


@pytest.mark.parametrize("name", [n for n, f in FOOTAGE.items() if not f.bars])
def test_full_frame_footage_with_title_cards_and_fades_has_no_bars(judged, name):
    _, bars, crop = judged[name]
    assert bars["share"] == 0.0 and crop is None and bars["crop"] is None, bars
    assert bars["blank"] is False and bars["colour"] is None


@pytest.mark.parametrize("name", [n for n, f in FOOTAGE.items() if f.bars])
def test_padded_footage_reports_the_padded_share(judged, name):
    footage, bars, crop = judged[name]
    assert abs(bars["share"] - footage.bar_share) <= 0.03, (bars, footage.bar_share)
    for side in ("top", "bottom", "left", "right"):
        assert abs(bars[side] - footage.bars.get(side, 0)) <= 2, (side, bars)
    assert bars["colour"] == "black" and crop is not None
    x0, y0, x1, y1 = bars["crop"]  # the crop keeps the picture and no bar
    b = footage.bars
    assert x0 >= b.get("left", 0) and y0 >= b.get("top", 0)
    assert x1 <= WIDTH - b.get("right", 0) and y1 <= HEIGHT - b.get("bottom", 0)


def test_a_black_video_stays_blank(tmp_path):
    import numpy as np

    from vqf.config import FilterConfig, Recipe, build
    from vqf.filters.borders import BordersFilter
    from vqf.ops.samples import write_h264
    from vqf.video.plane import VideoPlane

    black = (np.zeros((HEIGHT, WIDTH, 3), np.uint8) for _ in range(50))
    path = write_h264(tmp_path / "black.mp4", black, width=WIDTH, height=HEIGHT, fps=25)
    recipe = build(Recipe, {"sampling": {"detect_size": 320}}, "r")
    plane = VideoPlane(recipe=recipe, device="cpu")
    det = plane.detect_frames(plane.prepare(path, uri=str(path)))
    bars = BordersFilter(spec=FilterConfig()).detect(det.frames, letterbox=det.letterbox)
    assert bars.info["borders"]["blank"] is True and bars.crop is None
    assert bars.info["borders"]["share"] == 0.0


def test_table_of_border_shares(judged):
    """Measured against true shares, for the issue note (shown with pytest -s)."""
    lines = [f"{'video':18} {'true share':>10} {'measured':>9}  bars"]
    for name, (footage, bars, _) in judged.items():
        sides = {s: bars[s] for s in ("top", "bottom", "left", "right") if bars[s]}
        lines.append(f"{name:18} {footage.bar_share:10.4f} {bars['share']:9.4f}  {sides}")
    print("\n" + "\n".join(lines))
    errors = {name: abs(bars["share"] - f.bar_share) for name, (f, bars, _) in judged.items()}
    assert max(errors.values()) <= 0.03, f"share errors over 0.03: {errors}"
