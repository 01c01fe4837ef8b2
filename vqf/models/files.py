"""Reading vqf's own safetensors files: weights plus header metadata, never a pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqf.errors import ConfigError


def read_tagged(
    path: Path, *, what: str, fmt: str, writer: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The state dict and header metadata of a `what` file whose metadata says format `fmt`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise ConfigError(f"{what} file {str(path)!r} is not a safetensors file: {e}") from None
    if meta.get("format") != fmt:
        raise ConfigError(
            f"{what} file {str(path)!r} has format {meta.get('format')!r}",
            hint=f"expected {fmt!r}, as written by {writer}",
        )
    return state, meta
