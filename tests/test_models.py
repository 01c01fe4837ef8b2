"""Models: tiny V-JEPA 2 backbones, heads on safetensors, the offline YOLO detector, the bank."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vqf.config import FilterConfig, ModelConfig, Recipe, SamplingConfig, load_recipe
from vqf.errors import ConfigError
from vqf.filters import load_models
from vqf.models.bank import ModelBank
from vqf.models.checkpoints import init_random
from vqf.models.detector import Detector, random_network, read_detector, save_detector
from vqf.models.heads import AttentiveHead, LinearHead, load_head, save_head
from vqf.video.geometry import Letterbox

SIZE = 32  # clip side: 2x2 patches of 16
FRAMES = 8  # 4 tubelets of 2 frames
TOKENS = (FRAMES // 2) * (SIZE // 16) ** 2
DETECT = 64  # detector input side, a multiple of its stride 32
SAMPLING = SamplingConfig(
    height=SIZE, width=SIZE, whole_frames=FRAMES, window_frames=FRAMES, detect_size=DETECT
)
TOKEN_FILTERS = ("vfx", "simcam", "low_quality")


def tiny_recipe(filters=TOKEN_FILTERS, **models: ModelConfig) -> Recipe:
    return Recipe(
        sampling=SAMPLING,
        models=models or {"backbone": ModelConfig(init="random", size="tiny")},
        filters={name: FilterConfig() for name in filters},
    )


@pytest.fixture(scope="module")
def bank() -> ModelBank:
    """Three filters on one random tiny backbone."""
    return load_models(recipe=tiny_recipe(), device="cpu")


def clips(n: int, *, frames: int = FRAMES, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, frames, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_backbone_encodes_clips_to_tokens(bank):
    backbone = bank.backbone("backbone")
    calls, encoded = backbone.calls, backbone.clips_encoded
    tokens = backbone.encode(clips(3))
    assert tokens.shape == (3, TOKENS, 64)
    assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()
    assert (backbone.calls, backbone.clips_encoded) == (calls + 1, encoded + 3)
    # Rotary positions: a clip of another length needs no other model.
    assert backbone.encode(clips(1, frames=4)).shape == (1, TOKENS // 2, 64)
    # Different clips give different tokens (the encoder is not constant).
    assert not torch.allclose(tokens[0], tokens[1])


def test_backbone_refuses_clips_of_another_size(bank):
    with pytest.raises(ConfigError, match="32x32"):
        bank.backbone("backbone").encode(torch.zeros(1, FRAMES, 3, 64, 64))
    with pytest.raises(ConfigError, match="N, T, 3, H, W"):
        bank.backbone("backbone").encode(torch.zeros(FRAMES, 3, SIZE, SIZE))


def test_filters_on_one_backbone_encode_each_clip_once(bank):
    from vqf.filters import build_filters

    recipe = tiny_recipe()
    filters = build_filters(recipe=recipe, bank=bank)
    backbone = bank.backbone("backbone")
    before = backbone.clips_encoded
    batch = clips(4)
    # The engine's loop: group filters by model, encode once per group, apply every head.
    groups: dict[str, list] = {}
    for f in filters.values():
        groups.setdefault(f.model_name, []).append(f)
    outputs = {}
    for model_name, members in groups.items():
        tokens = bank.backbone(model_name).encode(batch)
        for f in members:
            outputs[f.name] = f.probs(tokens)
    assert list(groups) == ["backbone"] and len(groups["backbone"]) == 3
    assert backbone.clips_encoded - before == 4
    assert set(outputs) == set(TOKEN_FILTERS)
    for f in filters.values():
        assert outputs[f.name].shape == (4, len(f.labels))


@pytest.mark.parametrize("kind", ["linear", "attentive"])
def test_head_save_load_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    labels = ("a", "b", "c")
    if kind == "linear":
        head = LinearHead(dim=64, labels=labels)
    else:
        head = AttentiveHead(dim=64, labels=labels, num_blocks=2, num_heads=4)
    path = save_head(head, tmp_path / "head.safetensors")
    loaded = load_head(path)
    tokens = torch.randn(5, 12, 64)
    with torch.inference_mode():
        expected, got = head.eval()(tokens), loaded(tokens)
    assert type(loaded) is type(head) and loaded.labels == labels
    assert getattr(loaded, "num_blocks", 0) == (2 if kind == "attentive" else 0)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(5))
    # The file is plain safetensors: the metadata is readable without vqf.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["labels"]) == list(labels)
        assert f.metadata()["kind"] == kind


def test_load_head_rejects_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_head(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="not a safetensors file"):
        load_head(tmp_path / "junk.safetensors")


def test_init_random_checkpoints_load_as_pretrained(tmp_path):
    from safetensors.torch import load_file
    from transformers import VJEPA2Model

    from vqf.filters import FILTERS, build_filters

    fragment = init_random(tmp_path / "ckpt", size="tiny")
    root = tmp_path / "ckpt"
    assert (root / "backbone" / "config.json").is_file()
    assert (root / "rov_backbone" / "model.safetensors").is_file()
    assert (root / "detector" / "detector.safetensors").is_file()
    assert sorted(p.stem for p in (root / "heads").iterdir()) == sorted(
        n for n, c in FILTERS.items() if c.head_kind and c.default_model
    )
    assert "backbone/" in (root / "README.md").read_text()
    # The written recipe fragment is a valid recipe, loading every model as pretrained.
    recipe = load_recipe(
        root / "recipe.yaml",
        overrides=[
            f"sampling.height={SIZE}",
            f"sampling.width={SIZE}",
            f"sampling.detect_size={DETECT}",
        ],
    )
    assert {m.init for m in recipe.models.values()} == {"pretrained"}
    assert (
        set(recipe.filters) == {n for n, c in FILTERS.items() if c.default_model}
        and fragment["models"].keys() == recipe.models.keys()
    )
    bank = load_models(recipe=recipe, device="cpu")
    assert bank.random_models == () and bank.random_heads == ()

    # The bank computes with exactly the saved weights.
    batch = clips(2, seed=1)
    tokens = bank.backbone("backbone").encode(batch)
    reference = VJEPA2Model.from_pretrained(
        root / "backbone", local_files_only=True, crop_size=SIZE
    )
    with torch.inference_mode():
        expected = reference.eval()(
            pixel_values_videos=batch, skip_predictor=True
        ).last_hidden_state
    torch.testing.assert_close(tokens, expected)
    filters = build_filters(recipe=recipe, bank=bank)
    with torch.inference_mode():
        expected_vfx = load_head(root / "heads" / "vfx.safetensors")(tokens)
    torch.testing.assert_close(filters["vfx"].probs(tokens), expected_vfx)
    saved = load_file(str(root / "detector" / "detector.safetensors"))
    network, names = read_detector(root / "detector")
    assert names == FILTERS.get("abnormal_region").labels
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_bank_loads_each_model_once_and_marks_random(bank):
    recipe = tiny_recipe(
        ("vfx", "simcam", "rov"),
        backbone=ModelConfig(init="random"),
        rov_backbone=ModelConfig(init="random"),
    )
    two = load_models(recipe=recipe, device="cpu")
    assert set(two.backbones) == {"backbone", "rov_backbone"}
    assert two.backbone("backbone") is not two.backbone("rov_backbone")
    assert two.filter_models == {"vfx": "backbone", "simcam": "backbone", "rov": "rov_backbone"}
    assert set(two.random_models) == {"backbone", "rov_backbone"}
    assert set(two.random_heads) == {"vfx", "simcam", "rov"}
    # Seeded by name: every rank that loads the recipe draws the same weights.
    x = clips(1)
    torch.testing.assert_close(
        two.backbone("backbone").encode(x), bank.backbone("backbone").encode(x)
    )
    assert not torch.allclose(
        two.backbone("rov_backbone").encode(x), two.backbone("backbone").encode(x)
    )


def test_bank_reports_recipe_mistakes(tmp_path):
    with pytest.raises(ConfigError, match="does not define"):
        load_models(recipe=tiny_recipe(("rov",)), device="cpu")
    wrong_kind = tiny_recipe(
        ("abnormal_region",), detector=ModelConfig(kind="vjepa2", init="random")
    )
    with pytest.raises(ConfigError, match="needs a yolo model"):
        load_models(recipe=wrong_kind, device="cpu")
    no_path = tiny_recipe(("vfx",), backbone=ModelConfig())
    with pytest.raises(ConfigError, match="models.backbone.path is empty"):
        load_models(recipe=no_path, device="cpu")
    missing = tiny_recipe(("vfx",), backbone=ModelConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="lacks config.json"):
        load_models(recipe=missing, device="cpu")
    uri = tiny_recipe(("vfx",), backbone=ModelConfig(path="oss://bucket/ckpt"))
    with pytest.raises(ConfigError, match="no resolver"):
        load_models(recipe=uri, device="cpu")


def test_bank_fetches_checkpoints_through_the_resolver(tmp_path):
    init_random(tmp_path, size="tiny", filters=["low_quality"])
    asked = []

    def resolve(path: str) -> Path:
        asked.append(path)
        return tmp_path / path.removeprefix("oss://bucket/")

    recipe = Recipe(
        sampling=SAMPLING,
        models={"backbone": ModelConfig(path="oss://bucket/backbone")},
        filters={"low_quality": FilterConfig(head="oss://bucket/heads/low_quality.safetensors")},
    )
    bank = load_models(recipe=recipe, device="cpu", resolve=resolve)
    assert asked == ["oss://bucket/backbone", "oss://bucket/heads/low_quality.safetensors"]
    assert bank.random_models == ()


def _forced_network(names):
    """A random detector whose class biases are raised, so it reports boxes everywhere."""
    network = random_network(names=names, seed=0)
    with torch.no_grad():
        for branch in network.model[-1].cv3:
            branch[-1].bias.fill_(6.0)
    return network


def test_detector_returns_boxes_in_letterboxed_pixels(tmp_path):
    names = ("border", "logo")
    network = _forced_network(names)
    path = save_detector(network, tmp_path / "detector.safetensors", names=names)
    loaded, loaded_names = read_detector(path)
    assert loaded_names == names
    detector = Detector.from_network(
        loaded, name="detector", names=names, device="cpu", dtype=torch.float32
    )
    frames = torch.rand(2, 3, DETECT, DETECT, generator=torch.Generator().manual_seed(0))
    found = detector.detect(frames, conf=0.5, max_det=20)
    assert len(found) == 2 and detector.frames_detected == 2
    for boxes in found:
        assert boxes.shape[1] == 6 and 0 < len(boxes) <= 20
        x0, y0, x1, y1, conf, cls = boxes.T
        assert (x0 < x1).all() and (y0 < y1).all()
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= DETECT).all() and (y1 <= DETECT).all()
        assert ((conf >= 0.5) & (conf <= 1)).all()
        assert set(cls.tolist()) <= {0.0, 1.0}
    # The same weights through the unsaved network give the same boxes.
    direct = Detector.from_network(
        network, name="d", names=names, device="cpu", dtype=torch.float32
    )
    for a, b in zip(direct.detect(frames, conf=0.5, max_det=20), found, strict=True):
        assert a.shape == b.shape and abs(a - b).max() < 1e-3
    with pytest.raises(ConfigError, match="multiple of its stride"):
        detector.detect(torch.rand(1, 3, 40, 40))


def test_the_detector_runs_channels_last_with_the_boxes_of_the_plain_layout():
    """The detector keeps its convolutions' weights NHWC (the layout oneDNN and cuDNN run
    fastest); predictions match the same fused network run in PyTorch's default layout."""
    names = ("border", "logo")
    detector = Detector.from_network(
        _forced_network(names), name="d", names=names, device="cpu", dtype=torch.float32
    )
    convs = [m.weight for m in detector.network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    frames = torch.rand(3, 3, DETECT, DETECT, generator=torch.Generator().manual_seed(1))
    plain = copy.deepcopy(detector.network).to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        want = plain(frames)[0]
        got = detector.network(frames.contiguous(memory_format=torch.channels_last))[0]
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    assert all(len(b) for b in detector.detect(frames, conf=0.5, max_det=20))


def test_detector_builds_and_runs_offline(tmp_path):
    """A fresh interpreter: importing ultralytics through vqf sets the offline variables first,
    and building and running the detector opens no connection and resolves no host."""
    script = textwrap.dedent(
        """
        import json, os, socket, sys
        def refuse(*args, **kwargs):
            raise AssertionError(f"network access: {args!r}")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.getaddrinfo = refuse
        import torch
        from vqf.models.detector import Detector, random_network
        assert "ultralytics" not in sys.modules
        network = random_network(names=("a", "b"), seed=0, config_dir=sys.argv[1])
        detector = Detector.from_network(network, name="d", names=("a", "b"), device="cpu", dtype=torch.float32)
        found = detector.detect(torch.rand(1, 3, 64, 64), conf=0.0, max_det=5)
        from ultralytics.utils import SETTINGS
        keys = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "OMP_NUM_THREADS")
        print(json.dumps({"env": {k: os.environ.get(k) for k in keys},
                          "sync": SETTINGS["sync"], "shape": list(found[0].shape)}))
        """
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("YOLO_") and k != "OMP_NUM_THREADS"
    }
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    config_dir = tmp_path / "yolo"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(config_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["env"] == {
        "YOLO_OFFLINE": "true",
        "YOLO_AUTOINSTALL": "false",
        "YOLO_CONFIG_DIR": str(config_dir),
        "OMP_NUM_THREADS": None,  # ultralytics' training default does not leak to our processes
    }
    assert out["sync"] is False and out["shape"] == [5, 6]
    assert any(config_dir.rglob("settings.json"))


def test_letterbox_maps_boxes_back_to_frame_pixels():
    box = Letterbox.fit(width=1920, height=1080, size=960)
    assert box.scale_x == box.scale_y == 0.5 and box.resized == (960, 540)
    assert box.to_frame((100, 50, 200, 100)) == (200, 100, 400, 200)
    # A box reaching into the padding (right and bottom) is clipped to the frame.
    assert box.to_frame((-5, 0, 960, 960)) == (0, 0, 1920, 1080)
    assert box.relative((480, 270, 1920, 1080)) == (0.25, 0.25, 1.0, 1.0)
    # Portrait: the padding is on the right.
    tall = Letterbox.fit(width=1080, height=1920, size=960)
    assert tall.resized == (540, 960) and tall.to_frame((0, 0, 600, 960)) == (0, 0, 1080, 1920)


def test_bank_dtype_per_device(device):
    """bf16 backbones with SDPA on CUDA (fp16 on GPUs without bf16; the detector fp16),
    float32 on CPU; heads follow their backbone."""
    recipe = tiny_recipe(
        ("vfx", "abnormal_region"),
        backbone=ModelConfig(init="random"),
        detector=ModelConfig(kind="yolo", init="random"),
    )
    bank = load_models(recipe=recipe, device=device)
    detector_dtype = torch.float16 if device == "cuda" else torch.float32
    expected = detector_dtype
    if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8:
        expected = torch.bfloat16
    backbone = bank.backbone("backbone")
    assert backbone.model.config._attn_implementation == "sdpa"
    tokens = backbone.encode(clips(2))
    assert tokens.dtype == expected and tokens.device.type == device
    probs = bank.head("vfx")(tokens)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, device=device))
    assert next(bank.detector("detector").network.parameters()).dtype == detector_dtype
    found = bank.detector("detector").detect(torch.rand(1, 3, DETECT, DETECT), conf=0.0, max_det=3)
    assert found[0].shape == (3, 6)
