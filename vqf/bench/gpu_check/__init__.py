"""`vqf gpu-check`: the GPU claims proved and measured in one run of at most 390 s.

Sections run in order, each in a child process under its own time limit, so a hung CUDA call
or a crash costs that section only. After each one the report is rewritten, `gpu-check.md`
and `gpu-check.json` under `--out`: a run cut off still leaves what it measured. The order
puts first what matters most if the run is cut short:

- env: driver, CUDA, torch, libnvcuvid, DALI and PyAV imported, the GPU's state (read, never
  changed), and `vqf doctor`'s one-frame NVDEC decode
- videos: the 10 s 1080p30 H.264 (B-frames, 2 s GOP) the later sections decode
- gpu_paths: `pytest -m gpu tests/test_gpu_paths.py` with VQF_REQUIRE_GPU=1: NVDEC frames
  against the CPU route's, no device-to-host copy of frames, bf16/fp16 tokens against fp32
- backbone: V-JEPA 2 ViT-L (random weights) on (N, 48, 3, 256, 256) clips: TFLOP/s per dtype
  (FLOPs by vqf.bench.floors), next to a dense matrix product's rate on the same GPU
- profile: `vqf profile pipelines/stage2.yaml` with random large weights: videos/s, GPU and
  NVDEC utilisation, the floors of DESIGN.md section 8
- baseline: the seed's design (vqf.bench.baseline, what `--baseline` runs) on the first 4
  rows, saved after each video; side by side with the profile
- nvdec: decode fps through the video plane with 1, 2, 4, 8 and 14 NVDEC sessions in flight
  (a thread and a VideoPlane each, as decode lanes run), NVML decoder utilisation alongside
- gpu_tests: the rest of `pytest -m gpu`, in what time is left

`--only SECTION,...` reruns some sections and keeps the others' results from the last run with
the same `--work` folder. `--smoke` runs the same code on a CPU with tiny sizes.

Modules: `modes` (sizes and limits), `context` (what a section gets, the JSON files),
`runner` (child processes, budget, the command line),
`sections` (env, videos, the two pytest sections), `measure` (backbone, profile, baseline,
nvdec), `report`.
"""

from vqf.bench.gpu_check.modes import GPU, SECTIONS, SMOKE, Mode
from vqf.bench.gpu_check.runner import main, run_check, run_section

__all__ = ["GPU", "SECTIONS", "SMOKE", "Mode", "main", "run_check", "run_section"]
