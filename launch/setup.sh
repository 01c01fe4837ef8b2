#!/usr/bin/env bash
# Makes .venv ready: creates it when missing and installs vqf with the tested versions
# (launch/constraints.txt). Re-installs only when pyproject.toml or the constraints change.
# Sourced by run.sh and test.sh; safe to run by hand.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VQF_VENV:-$root/.venv}
python=${PYTHON:-python3}
stamp="$venv/.vqf-installed"
want=$(cat "$root/pyproject.toml" "$root/launch/constraints.txt" | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "vqf: creating $venv (first use; installs torch, DALI, ultralytics: several minutes)" >&2
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "vqf: installing vqf and its dependencies into $venv" >&2
"$venv/bin/python" -m pip install -q -c "$root/launch/constraints.txt" -e "$root[dev]" 2>&1 \
  | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c "import vqf, torch, av, nvidia.dali, pyarrow" \
  || { echo "vqf: set-up failed; see the pip output above" >&2; exit 1; }
echo "$want" > "$stamp"
