"""Any landmark data set from a folder, described by one YAML (conf/data/landmark_folder.yaml):

- `format: csv`: one CSV, or one per split, with a row per image: the image's name (a path under `images`,
  with or without its suffix, or a bare file name found anywhere under it) and 2K coordinates x1, y1, ...,
  xK, yK in consecutive columns (`csv.image_column`, `csv.first_x_column`; names or 0-based positions).
- `format: pts`: a 300-W style `.pts` file beside each image (`<name>.pts`: "x y" lines, optionally inside
  `version: 1 / n_points: K / { ... }`).
- `format: coco`: a COCO keypoint JSON (`images`, `annotations` with `keypoints` [x, y, v] * K), one sample
  per annotation; a sample with an unlabelled point (v = 0) is recorded, not used.

Coordinates are pixels of the image (`one_based: true` for 1-based files such as 300-W's). With `crop`, each
sample is the square around its points' extent (`scale` x the longer side, padded with black beyond the
photo): the 300-W protocol of starting from the annotation's box. Errors stay in pixels of the photo.

The cache holds every sample in `all.pt` with its group (the image file: faces of one photo stay together) and
its given split (the annotation file or list it came from); the data module cuts train / val / test from it
(`split_by`: given, random or folds; studykit.data.folds), so changing the fold does not rebuild the cache.
Problem rows and files are skipped and recorded in `report.json` with the file, line and reason.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from studykit.data.cache import CacheStatus, cached_build
from studykit.data.images import Issue, crop_square, enhance_clahe, points_square, read_grey, to_crop
from studykit.data.paths import UnsafePathError, data_root, relative_posix, safe_join
from studykit.utils.io import atomic_torch_save, atomic_write_json, code_fingerprint, sha256_file

log = logging.getLogger(__name__)

FORMATS = ("csv", "pts", "coco")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class Record:
    image_id: str
    path: Path
    landmarks: np.ndarray  # (K, 2) pixels
    category: int
    source: str = ""  # "file:line"
    split: str = ""   # the annotation file's or list's split, "" when none is given


@dataclass
class SplitRows:
    records: list[Record] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


# ---- reading images and cropping ---------------------------------------------------------------------------
def load_records(rows: SplitRows, split: str, image_size: int, clahe: dict | None,
                 crop: dict | None = None) -> tuple[dict[str, Any], list[Issue], list[str], list[str]]:
    """Read, check, (crop,) enhance and resize each record's image. Tensors: images uint8 (N, S, S), landmarks
    (N, K, 2) in pixels of the stored image, orig_size (N, 2) the (width, height) the stored image stands for in
    pixels of the photo, offset (N, 2) what maps it into the photo (photo = stored / S * orig_size + offset), category, image_id, group, split."""
    images, landmarks, orig, offsets, cats, ids, groups, tags = [], [], [], [], [], [], [], []
    issues = list(rows.issues)
    for rec in tqdm(rows.records, desc=f"prepare {split}", leave=False):
        if not rec.path.is_file():
            issues.append(Issue(str(rec.path), "image file not found", split=rec.split or split, annotation=rec.source))
            continue
        try:
            image = read_grey(rec.path)
        except ValueError as err:
            issues.append(Issue(str(rec.path), str(err), split=rec.split or split, annotation=rec.source))
            continue
        h, w = image.shape
        pts = rec.landmarks
        where = rec.split or split
        # a crop keeps points beyond the photo's edge (a face cut by the frame); the whole image must hold them
        outside = (pts[:, 0] < 0).any() or (pts[:, 0] > w).any() or (pts[:, 1] < 0).any() or (pts[:, 1] > h).any()
        if outside and not crop:
            issues.append(Issue(str(rec.path), f"landmark coordinates outside the {w}x{h} image", split=where, annotation=rec.source))
            continue
        if clahe and clahe.get("enabled"):
            image = enhance_clahe(image, clahe["clip_limit"], clahe["tile_grid"])
        offset = (0.0, 0.0)
        if crop:
            x0, y0, side = points_square(pts, float(crop.get("scale", 1.5)))
            if side < 2:
                issues.append(Issue(str(rec.path), "the points span less than 2 pixels: no box to crop", split=where, annotation=rec.source))
                continue
            image, pts = crop_square(image, x0, y0, side, image_size), to_crop(pts, x0, y0, side, image_size)
            w = h = side
            # photo = stored / image_size * side + offset exactly (the crop's pixel-centre shift folded in)
            shift = (side / image_size - 1) / 2
            offset = (x0 + shift, y0 + shift)
        elif (w, h) != (image_size, image_size):
            image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)
            pts = pts * np.array([image_size / w, image_size / h], dtype=np.float32)
        images.append(torch.from_numpy(np.ascontiguousarray(image)))
        landmarks.append(torch.from_numpy(pts.astype(np.float32)))
        orig.append((float(w), float(h)))
        offsets.append(offset)
        cats.append(rec.category)
        ids.append(rec.image_id)
        groups.append(str(rec.path))
        tags.append(rec.split)
    n_lm = rows.records[0].landmarks.shape[0] if rows.records else 0
    tensors = {
        "images": torch.stack(images) if images else torch.zeros(0, image_size, image_size, dtype=torch.uint8),
        "landmarks": torch.stack(landmarks) if landmarks else torch.zeros(0, n_lm, 2),
        "orig_size": torch.tensor(orig, dtype=torch.float32).reshape(-1, 2),
        "category": torch.tensor(cats, dtype=torch.long),
        "image_id": ids,
    }
    if crop:
        tensors["offset"] = torch.tensor(offsets, dtype=torch.float32).reshape(-1, 2)
    return tensors, issues, groups, tags


# ---- finding images ----------------------------------------------------------------------------------------
class ImageIndex:
    """Image names as annotation files write them -> files under the image folder: a relative path (with or
    without its suffix), else a bare name or stem that is unique in the folder tree."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.by_name: dict[str, list[Path]] = {}
        for path in self.files:
            for key in {path.name, path.stem}:
                self.by_name.setdefault(key, []).append(path)

    def find(self, name: str, source: str) -> Path:
        """The file, or ValueError naming why not (missing, or a bare name shared by several files)."""
        direct = safe_join(self.folder, name, source=source)
        if direct.is_file():
            return direct
        for suffix in IMAGE_SUFFIXES:
            candidate = direct.with_name(direct.name + suffix)
            if candidate.is_file():
                return candidate
        found = self.by_name.get(Path(name).name, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"image name {name!r} matches {len(found)} files under {self.folder} "
                             f"({', '.join(relative_posix(p, self.folder) for p in found[:3])}...): write its relative path")
        raise ValueError(f"image {name!r} not found under {self.folder}")


def category_of(path: Path, image_root: Path, categories: Sequence[str], by: str | None) -> int | str:
    """The category index (`category_from: folder`: the image's parent folder must be one of `categories`), or
    the reason it has none."""
    if by != "folder":
        return 0
    folder = path.parent.name if path.parent != image_root else ""
    if folder not in categories:
        return f"image {relative_posix(path, image_root)!r} is in folder {folder!r}, not one of the categories {list(categories)}"
    return list(categories).index(folder)


def checked_points(values: Sequence[float], num_points: int, one_based: bool) -> np.ndarray | str:
    """(K, 2) float32 pixels, or the reason the values are not K finite x/y pairs."""
    try:
        coords = np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError as err:
        return f"non-numeric coordinate ({err})"
    if coords.size != 2 * num_points:
        return f"expected {num_points} x/y pairs ({2 * num_points} numbers), found {coords.size}"
    if not np.isfinite(coords).all():
        return "coordinate is NaN or infinite"
    return (coords.reshape(num_points, 2) - (1.0 if one_based else 0.0)).astype(np.float32)


# ---- the three annotation formats --------------------------------------------------------------------------
def column_index(spec: int | str, header: list[str] | None, where: str) -> int:
    if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
        return int(spec)
    if header is None or spec not in header:
        raise ValueError(f"{where}: column {spec!r} not in the header {header}")
    return header.index(spec)


def parse_csv(csv_path: Path, images: ImageIndex, num_points: int, options: dict[str, Any], categories: Sequence[str],
              category_from: str | None, one_based: bool, split: str) -> SplitRows:
    out = SplitRows()
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = [c.strip() for c in rows[0]] if options.get("header", True) and rows else None
    start = 2 if header is not None else 1
    image_col = column_index(options.get("image_column", 0), header, str(csv_path))
    first_x = column_index(options.get("first_x_column", 1), header, str(csv_path))
    for line_no, row in enumerate(rows[start - 1:], start=start):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{csv_path}:{line_no}"
        width = len(header) if header is not None else None
        if width is not None and len(row) != width:
            out.issues.append(Issue(str(csv_path), f"expected {width} columns as the header, found {len(row)}", line_no, split))
            continue
        try:
            first = first_x if first_x >= 0 else len(row) + first_x
            values, name = row[first:first + 2 * num_points], row[image_col].strip()
        except IndexError:
            out.issues.append(Issue(str(csv_path), f"row has {len(row)} columns", line_no, split))
            continue
        if len(row) < first + 2 * num_points:
            out.issues.append(Issue(str(csv_path), f"expected {num_points} x/y pairs from column {first}, the row has {len(row)} columns",
                                    line_no, split))
            continue
        add_record(out, name, values, images, num_points, categories, category_from, one_based, split, where, str(csv_path), line_no)
    return out


def add_record(out: SplitRows, name: str, values: Sequence[float], images: ImageIndex, num_points: int, categories: Sequence[str],
               category_from: str | None, one_based: bool, split: str, where: str, file: str, line: int | None) -> None:
    points = checked_points(values, num_points, one_based)
    if isinstance(points, str):
        out.issues.append(Issue(file, points, line, split))
        return
    try:
        path = images.find(name, where)
    except (ValueError, UnsafePathError) as err:
        out.issues.append(Issue(file, str(err), line, split))
        return
    category = category_of(path, images.folder, categories, category_from)
    if isinstance(category, str):
        out.issues.append(Issue(file, category, line, split))
        return
    out.records.append(Record(name, path, points, category, where, split))


def read_pts(path: Path) -> list[str]:
    """The numbers of a .pts file: plain "x y" lines, or 300-W's `version / n_points / { ... }` layout."""
    text = path.read_text(errors="replace")
    if "{" in text:
        text = text[text.index("{") + 1:text.rindex("}") if "}" in text else len(text)]
    return text.split()


def parse_pts(images: ImageIndex, names: list[str] | None, num_points: int, categories: Sequence[str], category_from: str | None,
              one_based: bool, split: str) -> SplitRows:
    """Every image with a `.pts` beside it (or the listed images, whose missing .pts are recorded)."""
    out = SplitRows()
    if names is None:
        paths = [p for p in images.files if p.with_suffix(".pts").is_file()]
    else:
        paths = []
        for name in names:
            try:
                paths.append(images.find(name, f"split list {split}"))
            except (ValueError, UnsafePathError) as err:
                out.issues.append(Issue(name, str(err), None, split))
    for path in paths:
        pts = path.with_suffix(".pts")
        if not pts.is_file():
            out.issues.append(Issue(str(pts), "no .pts file beside the image", None, split))
            continue
        add_record(out, relative_posix(path, images.folder), read_pts(pts), images, num_points, categories, category_from,
                   one_based, split, str(pts), str(pts), None)
    return out


def parse_coco(json_path: Path, images: ImageIndex, num_points: int, categories: Sequence[str], category_from: str | None,
               one_based: bool, split: str) -> SplitRows:
    out = SplitRows()
    try:
        data = json.loads(json_path.read_text())
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        annotations = list(data["annotations"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        out.issues.append(Issue(str(json_path), f"not a COCO keypoint file ({type(err).__name__}: {err})", None, split))
        return out
    for k, ann in enumerate(annotations):
        where = f"{json_path}:annotations[{k}]"
        keypoints = ann.get("keypoints") or []
        if ann.get("image_id") not in files:
            out.issues.append(Issue(str(json_path), f"annotations[{k}] names image_id {ann.get('image_id')!r}, not in images", None, split))
            continue
        if len(keypoints) != 3 * num_points:
            out.issues.append(Issue(str(json_path), f"annotations[{k}]: expected {num_points} keypoints [x, y, v], found "
                                    f"{len(keypoints)} numbers", None, split))
            continue
        visible = keypoints[2::3]
        if any(float(v) == 0 for v in visible):
            out.issues.append(Issue(str(json_path), f"annotations[{k}]: {sum(float(v) == 0 for v in visible)} points unlabelled (v = 0)",
                                    None, split))
            continue
        values = [c for i in range(num_points) for c in keypoints[3 * i:3 * i + 2]]
        before = len(out.records)
        add_record(out, files[ann["image_id"]], values, images, num_points, categories, category_from, one_based, split, where,
                   str(json_path), None)
        if len(out.records) > before and sum(1 for a in annotations if a.get("image_id") == ann["image_id"]) > 1:
            out.records[-1].image_id = f"{files[ann['image_id']]}#{ann.get('id', k)}"  # several faces in one photo
    return out


# ---- preparation -------------------------------------------------------------------------------------------
def split_files(root: Path, spec: str | dict[str, str] | None, what: str) -> dict[str, Path | None]:
    """{split: file} from one file (split "") or a mapping of split -> file; each must exist."""
    if spec is None:
        return {"": None}
    items = spec.items() if isinstance(spec, dict) else [("", spec)]
    out = {}
    for split, rel in items:
        path = safe_join(root, str(rel), source=f"data.prepare.{what}")
        if not path.is_file():
            raise FileNotFoundError(f"{what} file for split {split or 'all'!r} not found: {path}")
        out[str(split)] = path
    return out


def read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def prepare_landmark_folder(
    root: str | Path,
    cache_dir: str | Path,
    format: str,
    num_landmarks: int,
    images: str | dict[str, str | list[str]] = ".",
    annotations: str | dict[str, str] | None = None,
    lists: dict[str, str] | None = None,
    csv_options: dict[str, Any] | None = None,
    one_based: bool = False,
    categories: Sequence[str] | None = None,
    category_from: str | None = None,
    image_size: int = 256,
    crop: dict[str, Any] | None = None,
    clahe: dict | None = None,
    limit: int | None = None,
    force: bool = False,
) -> CacheStatus:
    """Build (or find) the cache of a landmark folder data set: `all.pt` and `report.json`."""
    if format not in FORMATS:
        raise ValueError(f"data.prepare.format must be one of {FORMATS}, got {format!r}")
    root = data_root(root)
    # one image folder, or (pts) a folder per split: {train: a, test: b}
    # one image folder, or (pts) folders per split: {train: [a, b], test: c}
    folders = {str(k): v for k, v in images.items()} if isinstance(images, dict) else {"": images}
    if len(folders) > 1 and format != "pts":
        raise ValueError("data.prepare.images maps splits to folders only for format pts; csv and coco name one folder")
    image_roots: dict[str, list[Path]] = {}
    for split, rels in folders.items():
        image_roots[split] = [safe_join(root, str(rel), source="data.prepare.images") for rel in (rels if isinstance(rels, list) else [rels])]
        for folder in image_roots[split]:
            if not folder.is_dir():
                raise FileNotFoundError(f"image folder {folder} does not exist")
    image_root = next(iter(image_roots.values()))[0]
    if format in ("csv", "coco") and annotations is None:
        raise ValueError(f"format {format} needs data.prepare.annotations (a file, or a mapping split -> file)")
    files = split_files(root, annotations, "annotations")
    list_files = split_files(root, lists, "lists") if lists else {}
    categories = list(categories or ["all"])
    clahe = dict(clahe or {"enabled": False})
    config = {
        "dataset": "landmark_folder", "format": format, "num_landmarks": int(num_landmarks), "images": folders,
        # content hashes, not paths: moving the data keeps the cache, editing an annotation file rebuilds it
        "annotations": {s: sha256_file(p) for s, p in files.items() if p is not None},
        "lists": {s: sha256_file(p) for s, p in list_files.items()},
        "csv_options": dict(csv_options or {}), "one_based": bool(one_based), "categories": categories,
        "category_from": category_from, "image_size": int(image_size), "crop": dict(crop) if crop else None,
        "clahe": clahe, "limit": limit,
        "code": code_fingerprint(prepare_landmark_folder),
    }

    def build(folder: Path) -> dict[str, Any]:
        indexes = {(split, path): ImageIndex(path) for split, paths in image_roots.items() for path in paths}
        index = next(iter(indexes.values()))
        rows = SplitRows()
        if format == "pts" and isinstance(images, dict):  # the folders give the splits
            for (split, _), split_index in indexes.items():
                part = parse_pts(split_index, None, int(num_landmarks), categories, category_from, one_based, split)
                rows.records += part.records
                rows.issues += part.issues
        elif format == "pts":
            for split, path in (list_files.items() if list_files else [("", None)]):
                part = parse_pts(index, read_list(path) if path else None, int(num_landmarks), categories, category_from, one_based, split)
                rows.records += part.records
                rows.issues += part.issues
        else:
            for split, path in files.items():
                if format == "csv":
                    part = parse_csv(path, index, int(num_landmarks), dict(csv_options or {}), categories, category_from, one_based, split)
                else:
                    part = parse_coco(path, index, int(num_landmarks), categories, category_from, one_based, split)
                rows.records += part.records
                rows.issues += part.issues
            if list_files:  # lists assign the annotated images to splits (names found as the annotations' are)
                split_of: dict[Path, str] = {}
                for split, path in list_files.items():
                    for name in read_list(path):
                        try:
                            split_of[index.find(name, f"split list {split}")] = split
                        except (ValueError, UnsafePathError) as err:
                            rows.issues.append(Issue(name, str(err), None, split))
                for rec in rows.records:
                    rec.split = split_of.get(rec.path, "")
        if limit is not None:
            rows.records = rows.records[: int(limit)]
        tensors, issues, groups, tags = load_records(rows, "all", int(image_size), clahe, crop)
        tensors.update({"categories": categories, "group": groups, "split": tags})
        atomic_torch_save(tensors, folder / "all.pt")
        referenced = {r.path for r in rows.records}
        unannotated = sorted(relative_posix(p, root) for ix in indexes.values() for p in ix.files if p not in referenced)
        report = {"kept": len(groups), "skipped": len(issues), "issues": [i.as_dict() for i in issues],
                  "splits_given": {t: tags.count(t) for t in sorted(set(tags))}, "unannotated_images": unannotated}
        if unannotated:
            log.warning("%d images under %s have no annotation (listed in report.json)", len(unannotated), image_root)
        for i in issues:
            log.warning("%s%s: %s", i.file, f":{i.line}" if i.line else "", i.reason)
        atomic_write_json(folder / "report.json", report)
        return {"kept": report["kept"], "n_issues": len(issues)}

    return cached_build(cache_dir, config, build, force=force)
