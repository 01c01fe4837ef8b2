#!/usr/bin/env bash
# The test command: sets up .venv from nothing if needed, then runs pytest.
# Extra arguments go to pytest (e.g. launch/test.sh -k storage, or -m gpu on a GPU machine).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash launch/setup.sh
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
