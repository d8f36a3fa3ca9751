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


def relative_posix(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to `root` as a/b/c.png, also when one of them was reached through a symbolic link and the
    other not (a data root that is a link to another disk, paths resolved by `safe_join`)."""
    path, root = Path(path), Path(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.resolve().relative_to(root.resolve()).as_posix()


def data_root(root: str | os.PathLike) -> Path:
    """An existing data root, declared read-only for this process (write helpers refuse paths inside it)."""
    from studykit.utils.io import protect

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (set paths.data_root or STUDYKIT_DATA_ROOT)")
    protect(root)
    return root
