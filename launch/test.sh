#!/usr/bin/env bash
# The test command: sets up the venv (.venv, or VQF_VENV) from nothing if needed, then runs pytest.
# Extra arguments go to pytest (e.g. launch/test.sh -k storage, or -m gpu on a GPU machine).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export VQF_VENV=${VQF_VENV:-$root/.venv}
bash launch/setup.sh
bash launch/test-deps.sh
export VQF_REQUIRE_FOOTAGE=${VQF_REQUIRE_FOOTAGE:-1}
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
exec "$VQF_VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
