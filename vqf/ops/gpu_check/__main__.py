"""`python -m vqf.ops.gpu_check`, the same as `vqf gpu-check` and launch/gpu-check.sh."""

import sys

from vqf.ops.gpu_check.runner import main

sys.exit(main())
