"""Tiered storage: CPFS, Alluxio, OSS, plain paths and http(s) URLs, tried in order.

`Fetcher(config).fetch(row)` gives a `FetchedVideo` (a context manager) or raises one
VideoError naming every tier's reason. Tiers are registered in `TIERS`; a user adds one
with `@TIERS.register("name")` on a `Tier` subclass and lists it in `storage.tiers`.
oss2 is imported only when the OSS tier first talks to a bucket.
"""

from vqf.storage import local, oss, web  # noqa: F401  # registers the built-in tiers
from vqf.storage.base import TIERS, Located, Miss, Target, Tier
from vqf.storage.fetcher import FetchedVideo, Fetcher
from vqf.storage.secret import add_secret, redact

__all__ = [
    "TIERS",
    "FetchedVideo",
    "Fetcher",
    "Located",
    "Miss",
    "Target",
    "Tier",
    "add_secret",
    "redact",
]
