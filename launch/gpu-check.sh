#!/usr/bin/env bash
# The GPU check (README, "GPU check"): environment, tests/test_gpu_paths.py, V-JEPA 2 ViT-L
# TFLOP/s, `vqf profile` of stage2 against the seed's design, NVDEC sessions in flight and the
# rest of `pytest -m gpu`, in at most 390 s, writing OUT/gpu-check.md and OUT/gpu-check.json
# after every section.
#
# On a GPU machine that has torch but not DALI, PyAV or ultralytics (and no network), their
# wheels arrive as the pieces of one tar (wheels.tar.00, wheels.tar.01, ...) or as .whl files,
# gathered in one folder; --wheels installs them into /tmp/site (or VQF_SITE) first, once: a
# later call on the same machine finds them there. Then the check runs:
#   bash launch/gpu-check.sh --wheels DIR --out OUT
# A second call on the same machine reruns the sections named and keeps the others' results
# (the work folder, under /tmp, holds the test video and the first call's report):
#   bash launch/gpu-check.sh --only gpu_tests --budget 200 --out OUT
# On a CPU, the same code with tiny sizes:
#   bash launch/gpu-check.sh --smoke --out runs/gpu-check
# PYTHON picks the interpreter (default: .venv/bin/python if there is one, else python3).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
site=${VQF_SITE:-/tmp/site}  # where --wheels installs to, first on PYTHONPATH
export PYTHONPATH=$site:$root${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

wheels="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
    --wheels=*) wheels=${1#--wheels=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "$wheels" ]; then
  if "$PYTHON" -c "import nvidia.dali, av, ultralytics" 2>/dev/null; then
    echo "wheels: DALI, PyAV and ultralytics already import; nothing installed"
  else
    started=$SECONDS
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    if compgen -G "$wheels/wheels.tar.*" >/dev/null; then
      cat "$wheels"/wheels.tar.* | tar -C "$unpacked" -xf -  # the pieces, in name order
      found=$(find "$unpacked" -name '*.whl')
    else
      found=$(find "$wheels" -maxdepth 2 -name '*.whl')
    fi
    [ -n "$found" ] || { echo "wheels: no .whl and no wheels.tar.* in $wheels" >&2; exit 2; }
    # shellcheck disable=SC2086  # one wheel per word; wheel names have no spaces
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" $found
    echo "wheels: $(echo "$found" | wc -l) installed into $site in $((SECONDS - started)) s"
  fi
fi
exec "$PYTHON" -m vqf.bench.gpu_check ${args[@]+"${args[@]}"}
