import sys

from vqf.cli import main

sys.exit(main())
