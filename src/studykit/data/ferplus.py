"""FER+ vote data: label.csv rows -> images and vote distributions, cached as `.pt`.

Each folder's label.csv (Microsoft's own training input) has no header: `image name, "(x, y, w, h)", then 10
vote counts` in the order of RAW_CLASSES. The class set is configurable: all 10 raw classes, or the 8
emotions with `unknown` and `NF` (not a face) dropped, or any subset. Votes over the kept classes are
normalised into a distribution; rows left with no votes are dropped and counted in the report. The number
of classes comes from the data, so another vote table with other classes needs no code change.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from studykit.data.cache import CacheStatus, cached_build
from studykit.data.images import Issue, read_grey
from studykit.data.paths import UnsafePathError, data_root, relative_posix, safe_join
from studykit.preprocessing.run import Source
from studykit.utils.io import atomic_torch_save, atomic_write_json, code_fingerprint, config_hash, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
RAW_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")
CLASS_SETS = {"raw10": RAW_CLASSES, "emotions8": RAW_CLASSES[:8]}


# the FER+ paper's training targets from the votes (data.train_target)
TARGETS = ("distribution", "majority", "sample")


def scheme_target(dist: torch.Tensor, scheme: str, rng: np.random.Generator) -> torch.Tensor:
    """The training target of one item under a FER+ paper scheme: `distribution` the votes themselves,
    `majority` a one-hot of the most voted class, `sample` a one-hot of a class drawn from the votes."""
    if scheme == "distribution":
        return dist
    if scheme == "majority":
        k = int(dist.argmax())
    else:
        p = dist.double().numpy()
        k = int(rng.choice(dist.numel(), p=p / p.sum()))
    return torch.nn.functional.one_hot(torch.tensor(k), dist.numel()).to(dist.dtype)


def resolve_classes(classes: str | Sequence[str], raw: Sequence[str] = RAW_CLASSES) -> list[str]:
    names = list(CLASS_SETS[classes]) if isinstance(classes, str) and classes in CLASS_SETS else list(classes)
    if isinstance(classes, str) and classes not in CLASS_SETS:
        raise ValueError(f"classes must be one of {sorted(CLASS_SETS)} or a list of names from {list(raw)}")
    unknown = [c for c in names if c not in raw]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the vote table has {list(raw)}")
    return names


def votes_to_distribution(votes: np.ndarray, keep: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, R) vote counts -> (N, C) distributions over the kept columns, and a mask of rows with votes."""
    kept = votes[:, list(keep)].astype(np.float64)
    total = kept.sum(axis=1)
    ok = total > 0
    dist = np.zeros_like(kept)
    dist[ok] = kept[ok] / total[ok, None]
    return dist.astype(np.float32), ok


def majority_labels(votes: np.ndarray, raw_classes: Sequence[str] = RAW_CLASSES,
                    classes: Sequence[str] = RAW_CLASSES[:8]) -> tuple[np.ndarray, list[str]]:
    """Microsoft's FER+ majority rule (FERPlus/src/ferplus.py, mode 'majority') on (N, R) raw vote counts:
    votes of 1 are dropped as outliers; the class with more than half of the remaining votes wins; with no such
    class the face is 'unknown'. Faces whose winner is not in `classes` (unknown, NF) are excluded.
    Returns the label index into `classes` (-1 when excluded) and the reason for each exclusion ('' if kept)."""
    counts = np.where(votes > 1.0, votes, 0.0)
    total = counts.sum(axis=1)
    top = counts.argmax(axis=1)
    has_majority = counts.max(axis=1) > 0.5 * total  # also False when every vote was a single
    index = {name: k for k, name in enumerate(classes)}
    labels = np.full(len(votes), -1, dtype=np.int64)
    reasons = []
    for i in range(len(votes)):
        if not has_majority[i]:
            reasons.append("no majority: no class holds more than half of the votes left after dropping single votes")
        elif raw_classes[top[i]] not in index:
            reasons.append(f"majority class {raw_classes[top[i]]!r} is not in the class set")
        else:
            labels[i] = index[raw_classes[top[i]]]
            reasons.append("")
    return labels, reasons


def split_folders(root: Path, splits: dict[str, str], label_file: str) -> dict[str, Path]:
    """Each split's image folder under `root` (no escaping it), checked to hold its vote table."""
    folders = {split: safe_join(root, rel, source="data.prepare.splits") for split, rel in splits.items()}
    for split, folder in folders.items():
        if not (folder / label_file).is_file():
            raise FileNotFoundError(f"vote table for split {split!r} not found: {folder / label_file}")
    return folders


def parse_label_csv(path: Path, image_dir: Path, num_votes: int, split: str) -> tuple[list[str], list[Path], np.ndarray, list[Issue]]:
    names, paths, votes, issues = [], [], [], []
    with open(path, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row:
                continue
            if len(row) != 2 + num_votes:
                issues.append(Issue(str(path), f"expected {2 + num_votes} columns (name, box, {num_votes} votes), found {len(row)}", line_no, split))
                continue
            try:
                counts = [float(v) for v in row[2:]]
            except ValueError as err:
                issues.append(Issue(str(path), f"non-numeric vote ({err})", line_no, split))
                continue
            if any(c < 0 or not np.isfinite(c) for c in counts):
                issues.append(Issue(str(path), "negative or non-finite vote count", line_no, split))
                continue
            try:
                image = safe_join(image_dir, row[0].strip(), source=f"{path}:{line_no}")
            except UnsafePathError as err:
                issues.append(Issue(str(path), str(err), line_no, split))
                continue
            names.append(row[0].strip())
            paths.append(image)
            votes.append(counts)
    return names, paths, np.asarray(votes, dtype=np.float32).reshape(-1, num_votes), issues


def prepare_ferplus(
    root: str | Path,
    cache_dir: str | Path,
    splits: dict[str, str],
    label_file: str = "label.csv",
    classes: str | Sequence[str] = "emotions8",
    raw_classes: Sequence[str] = RAW_CLASSES,
    image_size: int = 48,
    limit_per_split: dict[str, int] | None = None,
    force: bool = False,
) -> CacheStatus:
    """Cache images (N, S, S) uint8 and vote distributions (N, C) per split, with a report of every drop."""
    import cv2

    root = data_root(root)
    names = resolve_classes(classes, raw_classes)
    keep = [list(raw_classes).index(c) for c in names]
    folders = split_folders(root, splits, label_file)
    limit_per_split = dict(limit_per_split or {})
    config = {
        "dataset": "ferplus", "format_version": FORMAT_VERSION,
        "labels": {s: sha256_file(f / label_file) for s, f in folders.items()},
        "classes": names, "raw_classes": list(raw_classes), "image_size": image_size, "limit_per_split": limit_per_split,
        "code": code_fingerprint(prepare_ferplus),  # editing the preparation code rebuilds the cache
    }

    def build(out: Path) -> dict[str, Any]:
        report: dict[str, Any] = {"classes": names, "splits": {}, "issues": []}
        for split, folder in folders.items():
            ids, paths, votes, issues = parse_label_csv(folder / label_file, folder, len(raw_classes), split)
            dist, has_votes = votes_to_distribution(votes, keep)
            no_votes = [ids[i] for i in np.flatnonzero(~has_votes)]
            limit = limit_per_split.get(split)
            rows = [i for i in np.flatnonzero(has_votes)][: int(limit) if limit is not None else None]
            images, kept = [], []
            for i in tqdm(rows, desc=f"prepare {split}", leave=False):
                try:
                    image = read_grey(paths[i]) if paths[i].is_file() else None
                    if image is None:
                        raise ValueError("image file not found")
                except ValueError as err:
                    issues.append(Issue(str(paths[i]), str(err), split=split))
                    continue
                if image.shape != (image_size, image_size):
                    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
                images.append(torch.from_numpy(image))
                kept.append(i)
            tensors = {
                "images": torch.stack(images) if images else torch.zeros(0, image_size, image_size, dtype=torch.uint8),
                "distribution": torch.from_numpy(dist[kept]) if kept else torch.zeros(0, len(names)),
                "votes": torch.from_numpy(votes[kept]) if kept else torch.zeros(0, len(raw_classes)),
                "image_id": [ids[i] for i in kept],
                "classes": names,
            }
            atomic_torch_save(tensors, out / f"{split}.pt")
            report["splits"][split] = {"kept": len(kept), "no_votes_in_class_set": len(no_votes), "skipped": len(issues)}
            report["issues"] += [i.as_dict() for i in issues]
            if no_votes:
                log.warning("%s: %d rows have no votes among %s and were dropped (listed in report.json)", split, len(no_votes), names)
                report.setdefault("no_votes", {})[split] = no_votes
            for i in issues:
                log.warning("%s%s: %s", i.file, f":{i.line}" if i.line else "", i.reason)
        atomic_write_json(out / "report.json", report)
        return {"splits": report["splits"], "n_issues": len(report["issues"])}

    return cached_build(cache_dir, config, build, force=force)


# ---- the face pipeline's source: FER+ faces labelled by the majority rule -------------------------------
_LISTED: dict[str, Source] = {}


def ferplus_source(root: Path, prepare: dict[str, Any]) -> Source:
    """FER+ faces labelled by Microsoft's majority rule over each split folder's label.csv; faces with no
    majority, or whose majority is unknown / not-a-face, and files listed in `exclude` are left out and recorded.
    Listing reads every row of the vote tables (35,710, with a check of each file): a process that loads several
    runs of one data set (an ensemble, a sweep) lists it once, for as long as the vote tables are unchanged."""
    folders = split_folders(root, prepare["splits"], prepare.get("label_file", "label.csv"))
    tables = [(str(f), (f / prepare.get("label_file", "label.csv")).stat()) for f in folders.values()]
    key = config_hash({"root": str(root), "prepare": prepare,
                       "tables": [(name, st.st_mtime_ns, st.st_size) for name, st in tables]})
    if key not in _LISTED:
        _LISTED[key] = _list_ferplus(root, prepare, folders)
    listed = _LISTED[key]
    return Source(list(listed.paths), list(listed.labels), list(listed.subjects), list(listed.splits),
                  list(listed.excluded), list(listed.votes))


def _list_ferplus(root: Path, prepare: dict[str, Any], folders: dict[str, Path]) -> Source:
    raw = list(prepare.get("raw_classes", RAW_CLASSES))
    classes = resolve_classes(prepare.get("classes", "emotions8"), raw)
    exclude = {str(e) for e in prepare.get("exclude") or []}
    limits = dict(prepare.get("limit_per_split") or {})
    label_file = prepare.get("label_file", "label.csv")
    src = Source([], [], [], [])
    for split, folder in folders.items():
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
