"""Preparation of the chest X-ray landmark data set into cached `.pt` tensors.

Annotation CSVs have no header: `index, x1, y1, ..., xK, yK, filename`; the filename has no extension and
its class folder is the prefix before the last "-" with spaces as underscores ("Viral Pneumonia-100" ->
`Viral_Pneumonia/Viral Pneumonia-100.png`). Coordinates are pixels of the original image.

Each split becomes `{split}.pt`: images uint8 (N, H, W), landmarks float32 (N, K, 2) in pixels of the stored
image, orig_size float32 (N, 2) as (width, height) of the original, category int64 (N,), image_id list.
Every problem row or file is skipped and recorded in `report.json` with the file, line and reason.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from studykit.data.cache import CacheStatus, cached_build
from studykit.data.images import Issue
from studykit.data.landmark_folder import Record, SplitRows, load_records
from studykit.data.paths import UnsafePathError, data_root, safe_join
from studykit.utils.io import atomic_torch_save, atomic_write_json, code_fingerprint, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def image_path_for(image_dir: Path, image_id: str, source: str) -> Path:
    folder = image_id.rsplit("-", 1)[0].replace(" ", "_") if "-" in image_id else ""
    return safe_join(image_dir, folder, image_id + ".png", source=source)


def parse_annotation_csv(
    csv_path: Path, image_dir: Path, num_landmarks: int, categories: Sequence[str], split: str | None = None
) -> SplitRows:
    """Parse one annotation CSV; bad rows become issues naming the file and line."""
    out = SplitRows()
    expected_cols = 2 + 2 * num_landmarks
    with open(csv_path, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue

            def issue(reason: str, line_no: int = line_no) -> None:
                out.issues.append(Issue(str(csv_path), reason, line_no, split))

            if len(row) != expected_cols:
                issue(f"expected {expected_cols} columns (index, {num_landmarks} x/y pairs, filename), found {len(row)}")
                continue
            image_id = row[-1].strip()
            try:
                coords = np.asarray([float(v) for v in row[1:-1]], dtype=np.float32).reshape(num_landmarks, 2)
            except ValueError as err:
                issue(f"non-numeric coordinate ({err})")
                continue
            if not np.isfinite(coords).all():
                issue("coordinate is NaN or infinite")
                continue
            try:
                path = image_path_for(image_dir, image_id, f"{csv_path}:{line_no}")
            except UnsafePathError as err:
                issue(str(err))
                continue
            folder = path.parent.name
            if folder not in categories:
                issue(f"image {image_id!r} is in class folder {folder!r}, not one of {list(categories)}")
                continue
            out.records.append(Record(image_id, path, coords, categories.index(folder), f"{csv_path}:{line_no}"))
    return out


def prepare_cxr_landmarks(
    root: str | Path,
    cache_dir: str | Path,
    splits: dict[str, str],
    image_dir: str = "dataset",
    categories: Sequence[str] = ("COVID", "Normal", "Viral_Pneumonia"),
    num_landmarks: int = 15,
    image_size: int = 299,
    clahe: dict | None = None,
    limit_per_split: dict[str, int] | None = None,
    force: bool = False,
) -> CacheStatus:
    """Build (or find) the cached tensors for every split; returns the cache folder and whether it was hit."""
    root = data_root(root)
    csv_paths = {}
    for split, rel in splits.items():
        path = safe_join(root, rel, source="data.splits")
        if not path.is_file():
            raise FileNotFoundError(f"annotation file for split {split!r} not found: {path}")
        csv_paths[split] = path
    image_root = safe_join(root, image_dir, source="data.image_dir")
    if not image_root.is_dir():
        raise FileNotFoundError(f"image folder {image_root} does not exist")
    clahe = dict(clahe or {"enabled": False})
    limit_per_split = dict(limit_per_split or {})

    config = {
        "dataset": "cxr_landmarks",
        "format_version": FORMAT_VERSION,
        # content hashes, not paths: moving the data keeps the cache, editing a CSV rebuilds it
        "annotations": {split: sha256_file(p) for split, p in csv_paths.items()},
        "image_dir": image_dir,
        "categories": list(categories),
        "num_landmarks": num_landmarks,
        "image_size": image_size,
        "clahe": clahe,
        "limit_per_split": limit_per_split,
        "code": code_fingerprint(prepare_cxr_landmarks),  # editing the preparation code rebuilds the cache
    }

    def build(folder: Path) -> dict[str, Any]:
        report: dict[str, Any] = {"splits": {}, "issues": [], "unannotated_images": []}
        referenced: set[Path] = set()
        for split, csv_path in csv_paths.items():
            rows = parse_annotation_csv(csv_path, image_root, num_landmarks, categories, split)
            referenced.update(r.path for r in rows.records)
            if split in limit_per_split and limit_per_split[split] is not None:
                rows.records = rows.records[: int(limit_per_split[split])]
            tensors, issues, _, _ = load_records(rows, split, image_size, clahe)
            tensors["categories"] = list(categories)
            atomic_torch_save(tensors, folder / f"{split}.pt")
            report["splits"][split] = {"kept": len(tensors["image_id"]), "skipped": len(issues)}
            report["issues"] += [i.as_dict() for i in issues]
            for i in issues:
                where = f"{i.file}:{i.line}" if i.line else f"{i.file} (row {i.annotation})"
                log.warning("%s: %s", where, i.reason)
        for name in categories:
            folder_path = image_root / name
            if not folder_path.is_dir():
                problem = Issue(str(folder_path), "class folder is missing")
            elif not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder_path.iterdir()):
                problem = Issue(str(folder_path), "class folder has no images")
            else:
                continue
            report["issues"].append(problem.as_dict())
            log.warning("%s: %s", problem.file, problem.reason)
        on_disk = {p.resolve() for p in image_root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        report["unannotated_images"] = sorted(str(p) for p in on_disk - referenced)
        if report["unannotated_images"]:
            log.warning("%d images have no annotation row in any split (listed in report.json)", len(report["unannotated_images"]))
        atomic_write_json(folder / "report.json", report)
        return {"splits": report["splits"], "n_issues": len(report["issues"]), "n_unannotated": len(report["unannotated_images"])}

    return cached_build(cache_dir, config, build, force=force)
