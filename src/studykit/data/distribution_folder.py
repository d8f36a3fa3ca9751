"""Any label-distribution data set from a folder (conf/data/distribution_folder.yaml): images plus one CSV with
a row per image holding its name and, per class, a vote count or a probability (any number of classes).

    image,neutral,happy,sad          <- header: the image column, then the class columns (or data.prepare.classes)
    a/001.png,3,6,1                  <- votes (normalised to sum 1) or probabilities
    b/002.jpg,0.2,0.5,0.3

Names are paths under `images` (with or without their suffix) or bare names unique in the folder. An optional
split column (`split_column`, values train / val / test) gives the splits; otherwise the data module draws a
seeded random split or cross-validation folds (`split_by`). Every sample goes to `all.pt`: grey images (N, S, S)
uint8, `distribution` (N, C), the raw `votes`, image ids, groups and given splits. Rows with a missing or
unreadable image, a non-numeric, negative or all-zero vote row are skipped and recorded in `report.json`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from studykit.data.cache import CacheStatus, cached_build
from studykit.data.images import Issue, read_grey
from studykit.data.landmark_folder import ImageIndex
from studykit.data.paths import UnsafePathError, data_root, relative_posix, safe_join
from studykit.utils.io import atomic_torch_save, atomic_write_json, code_fingerprint, sha256_file

log = logging.getLogger(__name__)


def parse_vote_table(path: Path, image_column: str, classes: list[str] | None, split_column: str | None
                     ) -> tuple[list[str], list[tuple[int, str, np.ndarray, str]], list[Issue]]:
    """(class names, rows (line, image name, votes, split), issues) of a vote CSV with a header."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path} is empty: expected a header row (image column and class columns)")
    header = [c.strip() for c in rows[0]]
    if image_column not in header:
        raise ValueError(f"{path}: image column {image_column!r} not in the header {header}")
    if split_column and split_column not in header:
        raise ValueError(f"{path}: split column {split_column!r} not in the header {header}")
    names = list(classes) if classes else [c for c in header if c not in (image_column, split_column)]
    missing = [c for c in names if c not in header]
    if missing or len(names) < 2:
        raise ValueError(f"{path}: class columns {missing or names} not usable (need at least 2 of the header {header})")
    cols = [header.index(c) for c in names]
    out, issues = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            issues.append(Issue(str(path), f"expected {len(header)} columns as the header, found {len(row)}", line))
            continue
        try:
            votes = np.asarray([float(row[c]) for c in cols], dtype=np.float64)
        except ValueError as err:
            issues.append(Issue(str(path), f"non-numeric vote ({err})", line))
            continue
        if not np.isfinite(votes).all() or (votes < 0).any():
            issues.append(Issue(str(path), "a vote is negative, NaN or infinite", line))
            continue
        if votes.sum() <= 0:
            issues.append(Issue(str(path), "no votes for any class", line))
            continue
        split = row[header.index(split_column)].strip() if split_column else ""
        if split_column and split not in ("train", "val", "test"):
            issues.append(Issue(str(path), f"split {split!r} is not train, val or test", line))
            continue
        out.append((line, row[header.index(image_column)].strip(), votes, split))
    return names, out, issues


def prepare_distribution_folder(root: str | Path, cache_dir: str | Path, table: str, images: str = ".", image_column: str = "image",
                                classes: list[str] | None = None, split_column: str | None = None, image_size: int = 64,
                                limit: int | None = None, force: bool = False) -> CacheStatus:
    """Build (or find) the cache of a vote-table data set: `all.pt` and `report.json`."""
    root = data_root(root)
    table_path = safe_join(root, table, source="data.prepare.table")
    if not table_path.is_file():
        raise FileNotFoundError(f"vote table {table_path} not found")
    image_root = safe_join(root, images, source="data.prepare.images")
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder {image_root} does not exist")
    config = {"dataset": "distribution_folder", "table": sha256_file(table_path), "images": images, "image_column": image_column,
              "classes": list(classes) if classes else None, "split_column": split_column, "image_size": int(image_size),
              "limit": limit, "code": code_fingerprint(prepare_distribution_folder)}

    def build(folder: Path) -> dict[str, Any]:
        names, rows, issues = parse_vote_table(table_path, image_column, list(classes) if classes else None, split_column)
        index = ImageIndex(image_root)
        kept_images, votes, ids, groups, splits = [], [], [], [], []
        for line, name, row_votes, split in tqdm(rows[: int(limit) if limit is not None else None], desc="prepare", leave=False):
            try:
                path = index.find(name, f"{table_path}:{line}")
                image = read_grey(path)
            except (ValueError, UnsafePathError) as err:
                issues.append(Issue(str(table_path), str(err), line, split or None))
                continue
            if image.shape != (image_size, image_size):
                image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
            kept_images.append(torch.from_numpy(np.ascontiguousarray(image)))
            votes.append(row_votes)
            ids.append(relative_posix(path, image_root))
            groups.append(str(path))
            splits.append(split)
        raw = np.asarray(votes, dtype=np.float32).reshape(-1, len(names))
        tensors = {
            "images": torch.stack(kept_images) if kept_images else torch.zeros(0, image_size, image_size, dtype=torch.uint8),
            "distribution": torch.from_numpy(raw / raw.sum(1, keepdims=True)) if len(raw) else torch.zeros(0, len(names)),
            "votes": torch.from_numpy(raw),
            "image_id": ids, "group": groups, "split": splits, "classes": names,
        }
        atomic_torch_save(tensors, folder / "all.pt")
        for i in issues:
            log.warning("%s%s: %s", i.file, f":{i.line}" if i.line else "", i.reason)
        report = {"classes": names, "kept": len(ids), "skipped": len(issues), "issues": [i.as_dict() for i in issues],
                  "splits_given": {s: splits.count(s) for s in sorted(set(splits))}}
        atomic_write_json(folder / "report.json", report)
        return {"kept": len(ids), "n_issues": len(issues)}

    return cached_build(cache_dir, config, build, force=force)
