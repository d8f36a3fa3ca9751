"""Safe, atomic file I/O shared by caches, reports and checkpoints."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import inspect
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_READ_ONLY_ROOTS: set[Path] = set()


def protect(root: str | os.PathLike) -> None:
    """Declare a data root read-only for this process: every write helper below refuses paths inside it."""
    _READ_ONLY_ROOTS.add(Path(root).resolve())


def check_writable(path: str | os.PathLike) -> Path:
    """`path`, unless it lies inside a data root declared read-only (`protect`): then PermissionError."""
    path = Path(path)
    resolved = path.resolve()
    for root in _READ_ONLY_ROOTS:
        if resolved == root or root in resolved.parents:
            raise PermissionError(f"refusing to write {path}: it lies inside the read-only data root {root}")
    return path


def make_dirs(path: str | os.PathLike) -> Path:
    """mkdir -p of a folder that is checked first (`check_writable`)."""
    path = check_writable(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_tree(path: str | os.PathLike) -> None:
    """rm -r of a folder that is checked first (`check_writable`)."""
    shutil.rmtree(check_writable(path))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain open() would give a new file: 0o666 less the process umask (mkstemp's own files are
    0600, which would make caches and reports unreadable to the other users of a shared folder)."""
    return 0o666 & ~_current_umask()


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temp file in `path`'s folder (so the final rename never crosses filesystems), with the usual mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())
    return fd, tmp


@contextmanager
def _replacing(path: str | os.PathLike, keep_previous: bool = False):
    """A binary file handle on a temp file beside `path` (the final rename never crosses filesystems), with the
    usual mode; on a clean exit it is fsynced and renamed over `path`, so readers never see a partial file. With
    `keep_previous` the file it replaces stays as `<name>.prev`, hard-linked first so `path` never goes missing."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.is_file():
            prev, prev_tmp = previous_copy(path), f"{tmp}.prev"
            try:
                os.link(path, prev_tmp)
                os.replace(prev_tmp, prev)
            except OSError:  # a filesystem without hard links: a copy
                shutil.copy2(path, prev)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, f"{tmp}.prev"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same folder, then rename: readers never see a partial file."""
    with _replacing(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text; a file name that is not valid UTF-8 (Python keeps its bytes as surrogates) is written back
    as its original bytes instead of failing the whole write."""
    atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def atomic_write_image(path: str | os.PathLike, image: Any) -> Path:
    """An image array (OpenCV's BGR or grey) encoded by the file's suffix and written atomically."""
    import cv2

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode an image as {path.suffix!r}")
    atomic_write_bytes(path, encoded.tobytes())
    return path


def atomic_save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure rendered in memory (format from the suffix) and written atomically."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def guard_outputs(data_root: str | os.PathLike | None, *outputs: str | os.PathLike | None) -> None:
    """What every entry point does first: declare the data root read-only for this process, and refuse an
    output folder (run, cache, predictions, export) that lies inside it, before anything is written."""
    if data_root:
        protect(data_root)
    for out in outputs:
        if out:
            check_writable(out)


def csv_text(header: list[str], rows) -> str:
    """A CSV document (header, then rows) as text, for the atomic writers."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


PREVIOUS_SUFFIX = ".prev"


def previous_copy(path: str | os.PathLike) -> Path:
    """Where `atomic_torch_save(..., keep_previous=True)` keeps the file it replaced."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def atomic_torch_save(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> None:
    """torch.save via a temp file in the target's folder, fsynced, then renamed over the target. With
    `keep_previous` the file it replaces stays as `<name>.prev`: a resume point with a fallback."""
    with _replacing(path, keep_previous) as fh:
        torch.save(obj, fh)


class TruncatedFileError(RuntimeError):
    """A torch file that ends early (a write or copy was interrupted), as opposed to one refused as unsafe."""


def safe_torch_load(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """torch.load restricted to tensors and plain containers: a pickle that runs code is refused; a file cut
    short is reported as truncated (TruncatedFileError), not as unsafe."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    complete = zipfile.is_zipfile(path)  # torch.save writes a zip archive; one cut short lacks its end record
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        if not complete:
            raise TruncatedFileError(
                f"{path}: truncated or not a torch file ({path.stat().st_size} bytes, no complete zip archive): "
                "its write was interrupted or it was copied in part") from err
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


def _project_code(obj: Any, package: str) -> bool:
    return (inspect.isfunction(obj) or inspect.isclass(obj)) and str(getattr(obj, "__module__", "")).split(".")[0] == package


def code_dependencies(fn: Callable[..., Any]) -> dict[str, Any]:
    """`fn` and every function and class of its own top-level package (studykit) that it uses, transitively
    and across modules - names of its module, attributes of project modules it holds, names it imports inside
    its body - by qualified name."""
    package = fn.__module__.split(".")[0]
    found: dict[str, Any] = {}
    queue = [fn]
    while queue:
        obj = queue.pop()
        key = f"{obj.__module__}.{obj.__qualname__}"
        if key in found:
            continue
        found[key] = obj
        module = sys.modules[obj.__module__]
        codes = [obj.__code__] if inspect.isfunction(obj) else [f.__code__ for f in vars(obj).values() if inspect.isfunction(f)]
        names: set[str] = set()
        while codes:
            code = codes.pop()
            names |= set(code.co_names)
            codes += [c for c in code.co_consts if inspect.iscode(c)]
        # where a name may live: this module, project modules it references, and project modules imported in the body
        namespaces = [module] + [v for v in vars(module).values() if inspect.ismodule(v) and v.__name__.split(".")[0] == package]
        namespaces += [m for name, m in sys.modules.items() if name.split(".")[0] == package and name in names]
        for name in names:
            for space in namespaces:
                used = getattr(space, name, None)
                if _project_code(used, package):
                    queue.append(used)
    return found


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """Hash of the source of `fn` and of its `code_dependencies`: editing any of them (e.g. the image reader a
    stage calls, in another module) changes the fingerprint, and so the cache key of what was built with `fn`."""
    sources = sorted(inspect.getsource(obj) for obj in code_dependencies(fn).values())
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()[:16]


@contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False):
    """Advisory lock on `path` (created if needed) for processes that share a folder: exclusive, or `shared`
    (many readers at once, no writer). The lock file is opened read-only, so a second user of a shared cache
    can lock a file another user created."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
