"""vqf: a GPU video quality filter.

Importing vqf loads nothing heavy; DALI, torch, ultralytics, pyodps and oss2 are imported by
the stages that use them.
"""

__version__ = "0.1.0"
