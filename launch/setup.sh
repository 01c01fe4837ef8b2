#!/usr/bin/env bash
# Makes the venv ready: creates it when missing and installs vqf with one of two tested stacks,
# each of one CUDA major, so torch and DALI never bring two CUDA runtimes into one process:
#   cu12  launch/constraints-cu12.txt  torch 2.10.0 (CUDA 12.8) + nvidia-dali-cuda120
#   cu13  launch/constraints-cu13.txt  torch 2.15.0 (CUDA 13)   + nvidia-dali-cuda130
# VQF_CUDA=12|13 picks one; else the driver does (the "CUDA Version" nvidia-smi reports: 13 needs
# an R580 driver); with no NVIDIA driver, cu13, the stack CI tests. Re-installs only when
# pyproject.toml, the stack or its lock file change. Sourced by run.sh and test.sh; safe by hand.
#
# VQF_RELOCK=1 rewrites the stack's lock file instead: into a venv that must not exist yet it
# installs vqf with the stack's anchors below, every other package held at the version
# launch/constraints-cu13.txt has (delete a line there to let it move), then pip freeze.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VQF_VENV:-$root/.venv}
python=${PYTHON:-python3}
stamp="$venv/.vqf-installed"

case "${VQF_CUDA:-}" in
  12 | 13)
    cuda=$VQF_CUDA why="VQF_CUDA=$VQF_CUDA" ;;
  "")
    driver=""
    if command -v nvidia-smi >/dev/null 2>&1; then
      driver=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1 || true)
    fi
    if [ -z "$driver" ]; then
      cuda=13 why="no NVIDIA driver answers nvidia-smi here: the default, which CI tests"
    elif [ "$driver" -ge 13 ]; then
      cuda=13 why="the driver runs CUDA $driver"
    elif [ "$driver" -eq 12 ]; then
      cuda=12 why="the driver runs CUDA 12 only"
    else
      echo "vqf: the NVIDIA driver runs CUDA $driver; vqf's stacks need CUDA 12 or 13" >&2
      exit 2
    fi ;;
  *)
    echo "vqf: VQF_CUDA=$VQF_CUDA is not allowed; use 12 or 13 (or leave it unset)" >&2
    exit 2 ;;
esac
case $cuda in
  12) anchors="torch==2.10.0 torchvision==0.25.0 nvidia-dali-cuda120==2.4.0" other=13 ;;
  13) anchors="torch==2.15.0 torchvision==0.29.2 nvidia-dali-cuda130==2.4.0" other=12 ;;
esac
stack=cu$cuda
lock="$root/launch/constraints-$stack.txt"
echo "vqf: CUDA $cuda stack ($stack, launch/constraints-$stack.txt): $why" >&2

if [ "${VQF_RELOCK:-0}" = 1 ]; then
  [ ! -e "$venv" ] || { echo "vqf: VQF_RELOCK=1 needs a fresh venv; $venv exists" >&2; exit 2; }
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  pins=$(mktemp)
  tr ' ' '\n' <<<"$anchors" >"$pins"
  grep -Ev '^(#|nvidia-|cuda-|torch==|torchvision==|triton==)' "$root/launch/constraints-cu13.txt" >>"$pins" || true
  "$venv/bin/python" -m pip install -q -c "$pins" -e "$root[dev,$stack]" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  rm -f "$pins"
  "$venv/bin/python" -c "import vqf, torch, nvidia.dali" \
    || { echo "vqf: the $stack install failed; see the pip output above" >&2; exit 1; }
  {
    echo "# The $stack stack: versions vqf is tested with (pip freeze of a fresh venv, VQF_RELOCK=1)."
    echo "# launch/setup.sh installs with -c this file; one CUDA major for torch and DALI."
    "$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^-e '
  } >"$lock"
  echo "vqf: wrote $lock" >&2
fi

want="$stack $(cat "$root/pyproject.toml" "$lock" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "vqf: creating $venv (first use; installs torch, DALI, ultralytics: several minutes)" >&2
  "$python" -m venv "$venv"
fi
# A venv holding the other stack's DALI (or an older install mixing the two) loses its CUDA
# packages first, so no library of the other CUDA major is left behind to be loaded.
if "$venv/bin/python" -m pip show -q "nvidia-dali-cuda${other}0" >/dev/null 2>&1; then
  echo "vqf: $venv holds CUDA $other packages; removing them (and torch) before installing $stack" >&2
  "$venv/bin/python" -m pip freeze --exclude-editable \
    | sed -n 's/^\(nvidia-[^=]*\|cuda-[^=]*\|torch\|torchvision\|triton\)==.*/\1/p' \
    | xargs -r "$venv/bin/python" -m pip uninstall -q -y
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "vqf: installing vqf and its dependencies ($stack) into $venv" >&2
"$venv/bin/python" -m pip install -q -c "$lock" -e "$root[dev,$stack]" 2>&1 \
  | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c "import vqf, torch, av, nvidia.dali, pyarrow, pynvml" \
  || { echo "vqf: set-up failed; see the pip output above" >&2; exit 1; }
echo "$want" >"$stamp"
