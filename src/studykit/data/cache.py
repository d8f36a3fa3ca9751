"""A folder of cached tensors trusted only through its manifest.

The manifest is written last, after every file, and records each file's size and sha256 and the hash of
the config that made them. A folder whose manifest is missing, names another config, or disagrees with a
file on disk is rebuilt, so a run killed midway never leaves a cache that is later trusted.

Processes share a cache through one lock file per folder: a build (or a forced rebuild) holds it exclusively,
readers (`load_cached`) hold it shared, so two processes starting on a cold cache get one build that both
load, and a rebuild never deletes files another process is reading.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studykit.utils.io import (
    atomic_write_json,
    config_hash,
    file_lock,
    make_dirs,
    remove_tree,
    safe_torch_load,
    sha256_file,
)

MANIFEST = "manifest.json"


@dataclass
class CacheStatus:
    path: Path
    hit: bool
    reason: str


def manifest_problem(folder: Path, expected_hash: str) -> str | None:
    """Why the cache in `folder` cannot be trusted, or None when it can."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (never built, or a build was interrupted)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"manifest unreadable: {err}"
    if manifest.get("config_hash") != expected_hash:
        return "made by a different config"
    for name, meta in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            return f"{name} missing"
        if file.stat().st_size != meta["size"]:
            return f"{name} has size {file.stat().st_size}, manifest says {meta['size']}"
        if sha256_file(file) != meta["sha256"]:
            return f"{name} content does not match its manifest hash"
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


def lock_file(folder: Path) -> Path:
    """The lock shared by the builders and readers of a cache folder (beside it, so a rebuild keeps it)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def reading(folder: Path):
    """Hold the folder's lock shared while reading it: no rebuild can delete it meanwhile."""
    with file_lock(lock_file(folder), shared=True):
        yield


def load_cached(folder: Path, name: str) -> Any:
    """A `.pt` file of a cache folder, read under the folder's shared lock (weights_only)."""
    with reading(folder):
        return safe_torch_load(Path(folder) / name)


def cached_build(
    root: str | Path,
    config: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    force: bool = False,
) -> CacheStatus:
    """Run `build(folder)` unless a valid cache for `config` exists under `root`.

    The folder is `root/<hash[:12]>`, so switching an option back re-uses the earlier cache. `build`
    writes its files (atomically) into the folder and returns extra manifest fields; the manifest is
    written afterwards with the sizes and hashes of every file present.
    """
    digest = config_hash(config)
    folder = Path(root) / digest[:12]
    # processes started together (DDP ranks, sweep members) build a cache once; readers hold the lock shared
    with file_lock(lock_file(folder)):
        return _build_unlocked(folder, digest, config, build, force)


def _build_unlocked(folder: Path, digest: str, config: dict[str, Any], build: Callable[[Path], dict[str, Any]], force: bool) -> CacheStatus:
    problem = None if force else manifest_problem(folder, digest)
    if not force and problem is None:
        return CacheStatus(folder, True, "cache hit")
    reason = "forced rebuild" if force else problem
    if folder.exists():
        remove_tree(folder)
    make_dirs(folder)
    extra = build(folder) or {}
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    atomic_write_json(folder / MANIFEST, {"config_hash": digest, "config": config, "files": files, **extra})
    return CacheStatus(folder, False, f"built ({reason})")
