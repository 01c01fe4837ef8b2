"""The abnormal-region detector: an ultralytics YOLOv8 network, offline, weights from safetensors.

Ultralytics is imported only through `import_ultralytics`, which first sets YOLO_OFFLINE,
YOLO_AUTOINSTALL=false and YOLO_CONFIG_DIR, then turns its settings `sync` off, so it never
reaches the network. The network is built from a yaml bundled with ultralytics and the
weights are loaded from a safetensors state dict; no checkpoint is ever unpickled.

Detector file (`detector.safetensors`): the unfused state dict of `DetectionModel(cfg, nc)`,
float32, with header metadata `format` = "vqf-yolo/1", `cfg` (a bundled yaml name, e.g.
"yolov8n.yaml"), `nc`, `names` (a JSON list of class names).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqf.errors import ConfigError
from vqf.models.files import read_tagged

if TYPE_CHECKING:
    import numpy as np
    import torch

DETECTOR_FORMAT = "vqf-yolo/1"
DETECTOR_FILE = "detector.safetensors"
DEFAULT_CFG = "yolov8n.yaml"
# Only yaml files bundled with ultralytics, named without any path.
_CFG_PATTERN = re.compile(r"^yolov8[nslmx]?(-p2|-p6)?\.yaml$")


def offline_environment(*, config_dir: str | Path | None = None) -> dict[str, str]:
    """Sets ultralytics' offline variables in os.environ (before it is imported) and returns them."""
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    if config_dir is not None:
        Path(config_dir).mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    elif not os.environ.get("YOLO_CONFIG_DIR"):
        os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="vqf-yolo-")
    # Its banners and settings notices would interleave with the run's own progress display.
    os.environ.setdefault("YOLO_VERBOSE", "false")
    keys = ("YOLO_OFFLINE", "YOLO_AUTOINSTALL", "YOLO_CONFIG_DIR", "YOLO_VERBOSE")
    return {k: os.environ[k] for k in keys}


def import_ultralytics(*, config_dir: str | Path | None = None):
    """Imports ultralytics offline with settings sync off. The first call fixes its config dir."""
    offline_environment(config_dir=config_dir)
    had_omp = "OMP_NUM_THREADS" in os.environ
    import ultralytics

    if not had_omp:
        # ultralytics pins OMP_NUM_THREADS=1 for training; the processes vqf spawns keep theirs.
        os.environ.pop("OMP_NUM_THREADS", None)
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})
    return ultralytics


def _build_network(cfg: str, nc: int, *, config_dir: str | Path | None):
    if not _CFG_PATTERN.match(cfg):
        raise ConfigError(
            f"detector cfg {cfg!r} is not a bundled YOLOv8 yaml",
            hint="use a name such as yolov8n.yaml (no path)",
        )
    import_ultralytics(config_dir=config_dir)
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(cfg, nc=nc, verbose=False)


def random_network(*, names: tuple[str, ...], seed: int, cfg: str = DEFAULT_CFG, config_dir=None):
    """An unfused YOLOv8 network with random weights (ultralytics' own initialisation)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_network(cfg, len(names), config_dir=config_dir)


def save_detector(
    network, path: str | Path, *, names: tuple[str, ...], cfg: str = DEFAULT_CFG
) -> Path:
    """Writes an unfused network's state dict as safetensors with cfg, nc and names."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Integer buffers (BatchNorm's num_batches_tracked) stay as they are: strict loading wants them.
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": DETECTOR_FORMAT,
        "cfg": cfg,
        "nc": str(len(names)),
        "names": json.dumps(list(names)),
    }
    save_file(state, str(path), metadata=meta)
    return path


def _detector_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / DETECTOR_FILE
    if not path.is_file():
        raise ConfigError(
            f"detector weights {str(path)!r} do not exist",
            hint=f"point models.<name>.path at a folder holding {DETECTOR_FILE} or at the file",
        )
    return path


def read_detector(path: str | Path, *, config_dir=None):
    """(unfused network with the file's weights, class names) from a detector file or folder."""

    path = _detector_file(path)
    state, meta = read_tagged(
        path, what="detector", fmt=DETECTOR_FORMAT, writer="vqf.models.detector.save_detector"
    )
    try:
        names = tuple(json.loads(meta["names"]))
        network = _build_network(meta.get("cfg", DEFAULT_CFG), len(names), config_dir=config_dir)
        network.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ConfigError(f"detector file {str(path)!r} is inconsistent: {e}") from None
    return network, names


@dataclass
class Detector:
    """A fused, eval-mode YOLO network on one device. Boxes come back in letterboxed pixels."""

    name: str
    network: Any
    names: tuple[str, ...]
    device: Any
    dtype: Any
    calls: int = 0
    host_copies: int = 0
    frames_detected: int = 0
    stride: int = field(init=False)

    def __post_init__(self):
        self.stride = int(max(self.network.stride))

    @classmethod
    def from_network(cls, network, *, name: str, names: tuple[str, ...], device, dtype) -> Detector:
        """Fuses conv+batchnorm and moves the network to `device` / `dtype` for inference, its
        weights channels-last (NHWC): oneDNN's CPU convolutions and cuDNN's tensor-core ones
        run faster on that layout (on a 2-core CPU, 1.1-1.25x the NCHW forward at 4 to 16 frames of 320x320)."""
        import torch

        network = network.fuse(verbose=False).eval()
        network = network.to(device=device, dtype=dtype, memory_format=torch.channels_last)
        return cls(name=name, network=network, names=tuple(names), device=device, dtype=dtype)

    def detect(
        self, frames: torch.Tensor, *, conf: float = 0.25, iou: float = 0.7, max_det: int = 100
    ) -> list[np.ndarray]:
        """(D, 3, S, S) letterboxed RGB in 0..1 -> per frame a (K, 6) array: x0, y0, x1, y1, conf, cls.

        Boxes are clipped to the S x S input; K is at most `max_det`.
        """
        import torch
        from ultralytics.utils.nms import non_max_suppression

        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[2] != frames.shape[3]:
            raise ConfigError(
                f"detector takes frames shaped (D, 3, S, S), got {tuple(frames.shape)}"
            )
        if frames.shape[-1] % self.stride:
            raise ConfigError(
                f"detector input size {frames.shape[-1]} is not a multiple of its stride {self.stride}",
                hint="set sampling.detect_size to a multiple of 32 (e.g. 960)",
            )
        with torch.inference_mode():
            pixels = frames.to(device=self.device, dtype=self.dtype, non_blocking=True)
            pixels = pixels.contiguous(memory_format=torch.channels_last)
            prediction = self.network(pixels)
            kept = non_max_suppression(
                prediction, conf_thres=conf, iou_thres=iou, nc=len(self.names), max_det=max_det
            )
            # every frame's boxes in one tensor, tagged with the frame: one copy to the host
            tagged = torch.cat(
                [
                    torch.cat([k.new_full((len(k), 1), i), k[:, :6]], dim=1)
                    for i, k in enumerate(kept)
                ]
            )
            host = _inside(tagged.float(), size=frames.shape[-1]).cpu().numpy()
        self.calls += 1
        self.host_copies += 1
        self.frames_detected += int(frames.shape[0])
        return [host[host[:, 0] == i, 1:] for i in range(len(kept))]


def _inside(boxes: torch.Tensor, *, size: int) -> torch.Tensor:
    """(K, 7) frame-tagged boxes clipped to the input square; those left with no area dropped."""
    import torch

    boxes = torch.cat([boxes[:, :1], boxes[:, 1:5].clamp(0, size), boxes[:, 5:]], dim=1)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])
    return boxes[keep]
