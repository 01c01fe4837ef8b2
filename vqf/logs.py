"""Log format and level for every vqf process (the command and the ranks it spawns)."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str | None = None) -> None:
    """Sets the root logger from `level` or VQF_LOG (default INFO)."""
    level = level or os.environ.get("VQF_LOG", "INFO")
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
