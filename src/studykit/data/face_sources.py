"""The face data sources: which image files a face data set holds, with their labels, subjects and splits
(a `Source`), for the face pipeline to run on. One lister per `data.prepare.labels_from`: JAFFE's file names,
FER+'s vote tables (studykit.data.ferplus), class folders, or a plain file pattern."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from studykit.data.ferplus import ferplus_source
from studykit.data.paths import relative_posix
from studykit.preprocessing.run import Source, StageResult, preprocess_faces


def jaffe_label(path: Path) -> tuple[str, str]:
    """'KA.AN1.39.tiff' -> subject 'KA', expression 'AN'."""
    parts = path.name.split(".")
    if len(parts) < 3 or len(parts[1]) < 2:
        raise ValueError(f"{path}: not a JAFFE file name (SUBJECT.EXPRn.ID.tiff)")
    return parts[0], parts[1][:2]


def list_images(root: Path, pattern: str, limit: int | None = None) -> list[Path]:
    """The files matching `pattern` under `root`, sorted."""
    found = sorted(p for p in root.glob(pattern) if p.is_file())
    if not found:
        raise FileNotFoundError(f"no images matching {pattern!r} in {root}")
    return found[:limit] if limit else found


def glob_source(root: Path, prepare: dict[str, Any]) -> Source:
    files = list_images(root, prepare.get("pattern", "*"), prepare.get("limit"))
    return Source(files, [""] * len(files), [""] * len(files), [""] * len(files))


def jaffe_source(root: Path, prepare: dict[str, Any]) -> Source:
    files = list_images(root, prepare.get("pattern", "*.tiff"), prepare.get("limit"))
    tags = [jaffe_label(p) for p in files]
    return Source(files, [e for _, e in tags], [s for s, _ in tags], [""] * len(files))


def folder_source(root: Path, prepare: dict[str, Any]) -> Source:
    """One subfolder per class (its name is the label), any image format PIL reads (files it cannot read
    are recorded by the raw_tensors stage). `subject_regex`: its first group, searched in each file name,
    is the subject id for subject-independent folds. Empty class folders, duplicate file names and names
    the regex does not match are recorded in source_report.json, not fatal."""
    classes = list(prepare.get("classes") or sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise FileNotFoundError(f"{root}: no class subfolders (one folder per class is expected)")
    regex = re.compile(prepare["subject_regex"]) if prepare.get("subject_regex") else None
    src, seen = Source([], [], [], []), {}
    for label in classes:
        folder = root / label
        files = sorted(p for p in folder.glob(prepare.get("pattern") or "*") if p.is_file() and not p.name.startswith(".")) \
            if folder.is_dir() else []
        if not files:
            src.excluded.append({"path": label + "/", "split": "", "reason": "empty class folder" if folder.is_dir() else "class folder missing"})
            continue
        for path in files[: prepare.get("limit")]:
            rel = relative_posix(path, root)
            if path.name in seen:  # image ids are file names: a second file of that name would be ambiguous
                src.excluded.append({"path": rel, "split": "", "reason": f"duplicate file name (also {seen[path.name]})"})
                continue
            subject = ""
            if regex is not None:
                found = regex.search(path.name)
                if found is None:
                    src.excluded.append({"path": rel, "split": "", "reason": f"file name does not match subject_regex {regex.pattern!r}"})
                    continue
                subject = found.group(1) if found.groups() else found.group(0)
            seen[path.name] = rel
            src.paths.append(path), src.labels.append(label), src.subjects.append(subject), src.splits.append("")
    if not src.paths:
        raise FileNotFoundError(f"{root}: no images in the class folders {classes}")
    return src


SOURCES = {None: glob_source, "none": glob_source, "jaffe_filename": jaffe_source, "ferplus_majority": ferplus_source, "folder": folder_source}


def list_source(root: str | Path, prepare: dict[str, Any]) -> Source:
    """The source `prepare.labels_from` names, listed under `root`."""
    lister = prepare.get("labels_from")
    if lister not in SOURCES:
        raise ValueError(f"data.prepare.labels_from={lister!r} unknown; choose one of {[k for k in SOURCES if k]}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (set paths.data_root or STUDYKIT_DATA_ROOT)")
    return SOURCES[lister](root, prepare)


def prepare_faces(root: str | Path, cache_dir: str | Path, prepare: dict[str, Any]) -> tuple[dict[str, Any], list[StageResult]]:
    """List a face data set and run its configured pipeline over it (cached)."""
    return preprocess_faces(root, cache_dir, prepare, list_source(root, prepare))


def preprocess(cfg: DictConfig) -> tuple[dict[str, Any], list[StageResult]]:
    """`preprocess.py data=...`: the data set's pipeline, as its config says."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return prepare_faces(data["root"], data["cache_dir"], data["prepare"])
