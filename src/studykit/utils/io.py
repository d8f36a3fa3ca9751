"""Safe, atomic file I/O shared by caches, reports and checkpoints."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import inspect
import io
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch


_READ_ONLY_ROOTS: set[Path] = set()


def protect(root: str | os.PathLike) -> None:
    """Declare a data root read-only for this process: every write helper below refuses paths inside it."""
    _READ_ONLY_ROOTS.add(Path(root).resolve())


def check_writable(path: str | os.PathLike) -> Path:
    path = Path(path)
    resolved = path.resolve()
    for root in _READ_ONLY_ROOTS:
        if resolved == root or root in resolved.parents:
            raise PermissionError(f"refusing to write {path}: it lies inside the read-only data root {root}")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same folder, then rename: readers never see a partial file."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(header: list[str], rows) -> str:
    """A CSV document (header, then rows) as text, for the atomic writers."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers: a pickle that runs code is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"{path}: cannot be loaded safely (weights_only=True): {err}") from err


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable hash of a JSON-able config: key order does not matter."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """Hash of the source of `fn` and of every function and class of its module that it uses, transitively:
    editing any of them changes the fingerprint (and so the cache key of the stages built on `fn`)."""
    module = sys.modules[fn.__module__]
    seen: set[Any] = set()
    queue, sources = [fn], []
    while queue:
        obj = queue.pop()
        if obj in seen:
            continue
        seen.add(obj)
        sources.append(inspect.getsource(obj))
        codes = [obj.__code__] if inspect.isfunction(obj) else [f.__code__ for f in vars(obj).values() if inspect.isfunction(f)]
        names: set[str] = set()
        while codes:
            code = codes.pop()
            names |= set(code.co_names)
            codes += [c for c in code.co_consts if inspect.iscode(c)]
        for name in names:
            used = getattr(module, name, None)
            if (inspect.isfunction(used) or inspect.isclass(used)) and getattr(used, "__module__", None) == fn.__module__:
                queue.append(used)
    return hashlib.sha256("\n".join(sorted(sources)).encode()).hexdigest()[:16]


@contextmanager
def file_lock(path: str | os.PathLike):
    """Exclusive advisory lock on `path` (created if needed) for processes that share a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
