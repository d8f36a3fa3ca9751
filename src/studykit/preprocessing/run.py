"""`preprocess.py`: list a face data set and run its configured stages through the cached pipeline."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from studykit.data.paths import relative_posix
from studykit.data.ferplus import RAW_CLASSES, majority_labels, parse_label_csv, resolve_classes, split_folders, votes_to_distribution
from studykit.preprocessing.faces import STAGE_ALIASES, STAGES
from studykit.preprocessing.pipeline import Stage, StageResult, run_pipeline
from studykit.utils.io import atomic_write_json, make_dirs, protect, sha256_file

log = logging.getLogger(__name__)


def jaffe_label(path: Path) -> tuple[str, str]:
    """'KA.AN1.39.tiff' -> subject 'KA', expression 'AN'."""
    parts = path.name.split(".")
    if len(parts) < 3 or len(parts[1]) < 2:
        raise ValueError(f"{path}: not a JAFFE file name (SUBJECT.EXPRn.ID.tiff)")
    return parts[0], parts[1][:2]


def list_images(root: Path, pattern: str, limit: int | None = None, files: list[str] | None = None) -> list[Path]:
    """The files matching `pattern` under `root`, sorted; or, with `files`, exactly those files (names are
    names, never patterns: `face[1].jpg` is that file)."""
    if files:
        found = [Path(f) for f in files]
        missing = [str(f) for f in found if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"input files not found: {missing}")
        return found[:limit] if limit else found
    found = sorted(p for p in root.glob(pattern) if p.is_file())
    if not found:
        raise FileNotFoundError(f"no images matching {pattern!r} in {root}")
    return found[:limit] if limit else found


@dataclass
class Source:
    """What the pipeline runs on: image files with a label and a subject or split tag each, and the rows
    of the data set that were left out before any stage ran, with the reason for each."""

    paths: list[Path]
    labels: list[str]
    subjects: list[str]
    splits: list[str]
    excluded: list[dict[str, str]] = field(default_factory=list)
    votes: list[np.ndarray] = field(default_factory=list)  # per image, the annotators' distribution (FER+)


def glob_source(root: Path, prepare: dict[str, Any]) -> Source:
    files = list_images(root, prepare.get("pattern", "*"), prepare.get("limit"), prepare.get("files"))
    return Source(files, [""] * len(files), [""] * len(files), [""] * len(files))


def jaffe_source(root: Path, prepare: dict[str, Any]) -> Source:
    files = list_images(root, prepare.get("pattern", "*.tiff"), prepare.get("limit"))
    tags = [jaffe_label(p) for p in files]
    return Source(files, [e for _, e in tags], [s for s, _ in tags], [""] * len(files))


def ferplus_source(root: Path, prepare: dict[str, Any]) -> Source:
    """FER+ faces labelled by Microsoft's majority rule over each split folder's label.csv; faces with no
    majority, or whose majority is unknown / not-a-face, and files listed in `exclude` are left out and recorded."""
    raw = list(prepare.get("raw_classes", RAW_CLASSES))
    classes = resolve_classes(prepare.get("classes", "emotions8"), raw)
    exclude = {str(e) for e in prepare.get("exclude") or []}
    limits = dict(prepare.get("limit_per_split") or {})
    label_file = prepare.get("label_file", "label.csv")
    src = Source([], [], [], [])
    for split, folder in split_folders(root, prepare["splits"], label_file).items():
        _, paths, votes, issues = parse_label_csv(folder / label_file, folder, len(raw), split)
        src.excluded += [{"path": i.file + (f":{i.line}" if i.line else ""), "split": split, "reason": i.reason} for i in issues]
        labels, reasons = majority_labels(votes, raw, classes)
        dist, _ = votes_to_distribution(votes, [raw.index(c) for c in classes])
        kept = 0
        for path, label, reason, row_votes in zip(paths, labels, reasons, dist):
            rel_path = relative_posix(path, root)
            if not reason and any(rel_path == e or rel_path.endswith("/" + e) for e in exclude):
                reason = "listed in data.prepare.exclude"
            if not reason and not path.is_file():
                reason = "image file not found"
            if reason:
                src.excluded.append({"path": rel_path, "split": split, "reason": reason})
                continue
            if limits.get(split) is not None and kept >= int(limits[split]):
                continue  # a subset: keep reading, so that the report still lists every exclusion
            src.paths.append(path), src.labels.append(classes[label]), src.subjects.append(""), src.splits.append(split)
            src.votes.append(row_votes)
            kept += 1
    if not src.paths:
        raise FileNotFoundError(f"no labelled FER+ images under {root} (splits {dict(prepare['splits'])})")
    return src


def folder_source(root: Path, prepare: dict[str, Any]) -> Source:
    """One subfolder per class (its name is the label), any image format PIL reads (files it cannot read
    are recorded by the raw_tensors stage). `subject_regex`: its first group, searched in each file name,
    is the subject id for subject-independent folds. Empty class folders, duplicate file names and names
    the regex does not match are recorded in source_report.json, not fatal."""
    import re

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


def write_source_report(cache_dir: Path, source: Source) -> None:
    reasons = Counter(e["reason"].split(":")[0] for e in source.excluded)
    report = {"listed": len(source.paths) + len(source.excluded), "kept": len(source.paths),
              "kept_per_split": dict(Counter(source.splits)), "kept_per_label": dict(Counter(source.labels)),
              "excluded": len(source.excluded), "excluded_by_reason": dict(reasons), "excluded_rows": source.excluded}
    atomic_write_json(cache_dir / "source_report.json", report)
    if source.excluded:
        log.warning("%d rows left out before preprocessing (%s); listed in %s", len(source.excluded),
                    ", ".join(f"{n} {r}" for r, n in reasons.most_common()), cache_dir / "source_report.json")


def build_stages(pipeline: dict[str, Any]) -> list[Stage]:
    """The configured stages in order, checked up front: each stage's inputs must come from an earlier one."""
    stages, made = [], set()
    for configured in pipeline["stages"]:
        name = STAGE_ALIASES.get(configured, configured)
        if name not in STAGES:
            raise ValueError(f"unknown preprocessing stage {configured!r}; stages: {list(STAGES)}")
        spec = STAGES[name]
        missing = [need for need in spec.needs if need not in made]
        if missing:
            raise ValueError(f"preprocessing stage {name!r} needs {missing}, which no earlier stage in "
                             f"data.prepare.pipeline.stages={list(pipeline['stages'])} makes")
        made |= set(spec.makes)
        params = dict(pipeline.get(configured) or pipeline.get(name) or {})
        stages.append(Stage(name, spec.fn, params, version=spec.version, code=spec.code))
    return stages


def preprocess_faces(root: str | Path, cache_dir: str | Path, prepare: dict[str, Any]) -> tuple[dict[str, Any], list[StageResult]]:
    """List the images under `root` (prepare: pattern, labels_from, limit) and run prepare['pipeline']."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (set paths.data_root or STUDYKIT_DATA_ROOT)")
    protect(root)  # the data sets are read-only: no stage may write next to its inputs
    lister = prepare.get("labels_from")
    if lister not in SOURCES:
        raise ValueError(f"data.prepare.labels_from={lister!r} unknown; choose one of {[k for k in SOURCES if k]}")
    stages = build_stages(prepare["pipeline"])
    make_dirs(cache_dir)  # refused inside the data root
    src = SOURCES[lister](root, prepare)
    write_source_report(Path(cache_dir), src)
    state = {"paths": [str(p) for p in src.paths], "subjects": src.subjects, "labels": src.labels, "splits": src.splits}
    if src.votes:  # read afresh from the vote table each time: no stage uses them, so they key no cache
        state["votes"] = torch.from_numpy(np.stack(src.votes))
    source = {"files": [(relative_posix(p, root), sha256_file(p)) for p in src.paths], "labels": src.labels,
              "subjects": src.subjects, "splits": src.splits}
    return run_pipeline(stages, cache_dir, source, state)


def preprocess(cfg: DictConfig) -> tuple[dict[str, Any], list[StageResult]]:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return preprocess_faces(data["root"], data["cache_dir"], data["prepare"])
