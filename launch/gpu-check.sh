#!/usr/bin/env bash
# The GPU check (README, "GPU check"): environment, pytest -m gpu, NVDEC sessions in flight,
# V-JEPA 2 ViT-L TFLOP/s and `vqf profile` of stage2 against the seed's design, in at most
# 8 minutes, writing OUT/gpu-check.md and OUT/gpu-check.json after every section.
# On a GPU machine without DALI, PyAV or ultralytics, once their wheels are in /tmp/site:
#   bash launch/gpu-check.sh --out "$OUT"
# On a CPU, the same code with tiny sizes in under two minutes:
#   bash launch/gpu-check.sh --smoke --out runs/gpu-check
# PYTHON picks the interpreter (default: .venv/bin/python if there is one, else python3).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PYTHONPATH=/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m vqf.bench.gpu_check "$@"
