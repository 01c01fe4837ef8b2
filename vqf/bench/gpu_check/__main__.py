"""`python -m vqf.bench.gpu_check`, the same as `vqf gpu-check` and launch/gpu-check.sh."""

import sys

from vqf.bench.gpu_check.runner import main

sys.exit(main())
