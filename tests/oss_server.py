"""Loopback OSS server fixture (filled by the storage tests)."""
