"""Paths read from annotation files must stay inside their data root."""

from __future__ import annotations

import os
from pathlib import Path


class UnsafePathError(ValueError):
    pass


def safe_join(root: str | os.PathLike, *parts: str, source: str = "") -> Path:
    """Join `parts` under `root`, refusing absolute paths and any `..` that escapes the root."""
    root = Path(root).resolve()
    for part in parts:
        if os.path.isabs(part) or Path(part).drive:
            raise UnsafePathError(f"{source}: absolute path {part!r} is not allowed in annotations")
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise UnsafePathError(f"{source}: path {'/'.join(parts)!r} escapes the data root {root}")
    return path
