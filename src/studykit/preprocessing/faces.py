"""The face pipeline's stages, each a small function `(state, params, folder) -> outputs` that the cached
pipeline runs (studykit.preprocessing.pipeline): raw tensors, MTCNN boxes (or the full frame, for images that
are already face crops), CLAHE + unsharp enhancement, dlib 68 landmarks, crop with padding and resize with exact
coordinate mapping, and a landmark heat-map channel. Detection, dlib fitting and crop geometry live in their
own modules (detection, dlib68, geometry).

Coordinates are pixel indices (pixel i has its centre at i), dlib's convention. Images that fail a stage
(unreadable file, no face) keep their row with a status and a reason and are filtered from later stages.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from studykit.data.images import DEFAULT_MAX_PIXELS, read_rgb
from studykit.preprocessing.detection import FACE_SELECTION, mtcnn_detect, select_faces
from studykit.preprocessing.dlib68 import dlib_detect, dlib_points, predictor_box, predictor_path
from studykit.preprocessing.geometry import crop_box, landmark_heatmap, map_points
from studykit.preprocessing.landmark_run import run_fingerprint
from studykit.preprocessing.pipeline import Stage
from studykit.utils.io import atomic_write_text

log = logging.getLogger(__name__)
OK = "ok"


def ok_indices(state: dict[str, Any]) -> list[int]:
    return [i for i, s in enumerate(state["status"]) if s == OK]


# ---- 1. raw tensors --------------------------------------------------------------------------------------
def channel_sums(img: np.ndarray, rows_per_chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of pixel / 255 and of its square, in float64 over chunks of rows: a large photo is
    never copied whole as floats (8 bytes a value)."""
    total, total_sq = np.zeros(3), np.zeros(3)
    for start in range(0, img.shape[0], rows_per_chunk):
        pixels = img[start:start + rows_per_chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
    return total, total_sq


def raw_tensors(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Every photo as uint8 RGB, upright by its EXIF orientation. A file that cannot be read, or that has
    more than `max_pixels` pixels (default studykit.data.images.DEFAULT_MAX_PIXELS), is an `unreadable` row
    whose reason says why; the others go on."""
    max_pixels = params.get("max_pixels", DEFAULT_MAX_PIXELS)
    images, status, reason, sizes = [], [], [], []
    # per-channel statistics accumulated in float64 sums: a large data set never sits in memory as floats
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for path in tqdm(state["paths"], desc="raw tensors", leave=False):
        try:
            img = read_rgb(Path(path), max_pixels)
            images.append(torch.from_numpy(img.copy()).permute(2, 0, 1))
            status.append(OK), reason.append(""), sizes.append(img.shape[:2])
            sums, sums_sq = channel_sums(img)
            total += sums
            total_sq += sums_sq
            count += img.shape[0] * img.shape[1]
        except (FileNotFoundError, ValueError) as err:
            images.append(torch.zeros(3, 1, 1, dtype=torch.uint8))
            status.append("unreadable"), reason.append(str(err)), sizes.append((0, 0))
            log.error("%s", err)
    mean = total / max(count, 1)
    var = (total_sq - count * mean**2) / max(count - 1, 1)  # unbiased, as torch.std
    return {"images": images, "mean": torch.tensor(mean, dtype=torch.float32),
            "std": torch.tensor(np.sqrt(np.maximum(var, 0.0)), dtype=torch.float32), "status": status, "reason": reason,
            "orig_size": torch.tensor(sizes, dtype=torch.long)}


# ---- 2. MTCNN face boxes --------------------------------------------------------------------------------


# ---- 2. face boxes ------------------------------------------------------------------------------------------
# what every row of the state carries; `select: all` repeats them once per face found
ROW_KEYS = ("paths", "labels", "subjects", "splits", "images", "status", "reason")


def mtcnn_boxes(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """MTCNN faces above `min_probability`, one per photo chosen by `select`, or every one (`select: all`:
    one row per face, with `face_index` and `source_row` naming the photo's row before this stage)."""
    from facenet_pytorch import MTCNN

    detector = MTCNN(keep_all=True, min_face_size=int(params.get("min_face_size", 20)),
                     thresholds=list(params.get("thresholds", (0.6, 0.7, 0.7))), device="cpu")
    policy = str(params.get("select", "most_confident"))
    if policy not in FACE_SELECTION:  # checked before the first photo, not at the first face found
        raise ValueError(f"mtcnn_boxes.select must be one of {FACE_SELECTION}, got {policy!r}")
    min_prob = float(params.get("min_probability", 0.9))
    rows: list[tuple[int, int, np.ndarray | None, float, str, str]] = []  # source row, face index, box, prob, status, reason
    for i in tqdm(range(len(state["paths"])), desc="mtcnn boxes", leave=False):
        if state["status"][i] != OK:
            rows.append((i, -1, None, float("nan"), state["status"][i], state["reason"][i]))
            continue
        image = state["images"][i].permute(1, 2, 0).numpy()
        found, p = mtcnn_detect(detector, image, params.get("max_side"))
        keep = p >= min_prob
        if not keep.any():
            reason = "MTCNN found no face" if len(p) == 0 else f"best MTCNN face probability {float(p.max()):.2f} below {min_prob}"
            log.warning("%s: %s", state["paths"][i], reason)
            rows.append((i, -1, None, float("nan"), "no_face", reason))
            continue
        found, p = found[keep], p[keep]
        for k, j in enumerate(select_faces(found, p, image.shape[1], image.shape[0], policy)):
            rows.append((i, k, found[j], float(p[j]), OK, ""))
    source = [r[0] for r in rows]
    out: dict[str, Any] = {key: [state[key][i] for i in source] for key in ROW_KEYS if key in state and key not in ("status", "reason")}
    out.update({
        "status": [r[4] for r in rows], "reason": [r[5] for r in rows],
        "orig_size": state["orig_size"][source] if len(source) else state["orig_size"][:0],
        "boxes": torch.tensor(np.stack([r[2] if r[2] is not None else np.full(4, np.nan, np.float32) for r in rows]))
        if rows else torch.zeros(0, 4),
        "box_prob": torch.tensor([r[3] for r in rows], dtype=torch.float32),
        "face_index": torch.tensor([r[1] for r in rows], dtype=torch.long),
        "source_row": torch.tensor(source, dtype=torch.long),
    })
    return out


def full_frame_boxes(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The whole image as the face box: for data sets whose images are already face crops (FER+), where
    running a detector would only lose faces too small or too tight for it."""
    sizes = state["orig_size"].float()
    n = len(state["paths"])
    boxes = torch.stack([torch.zeros(n), torch.zeros(n), sizes[:, 1], sizes[:, 0]], dim=1)
    return {"boxes": boxes, "box_prob": torch.full((n,), float("nan"))}


# ---- 3. enhancement ---------------------------------------------------------------------------------------
def clahe_unsharp(image: np.ndarray, clip_limit: float, tile_grid: int, amount: float, radius: float) -> np.ndarray:
    """CLAHE on the luminance (LAB L channel), then an unsharp mask: (1 + amount) * img - amount * blur."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    lab[..., 0] = clahe.apply(lab[..., 0])
    out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if amount > 0:
        blur = cv2.GaussianBlur(out, (0, 0), sigmaX=float(radius))
        out = cv2.addWeighted(out, 1.0 + float(amount), blur, -float(amount), 0)
    return out


def enhanced_tensors(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`enhanced` beside the untouched `images`: the classifier is fed the enhanced faces, while dlib's
    predictor, trained on ordinary photos, runs on the originals (`landmarks.image: raw`)."""
    enhanced = list(state["images"])
    done: dict[int, torch.Tensor] = {}  # rows of one photo (select: all) share its enhanced image
    for i in tqdm(ok_indices(state), desc="enhance", leave=False):
        key = id(state["images"][i])
        if key not in done:
            img = state["images"][i].permute(1, 2, 0).numpy()
            out = clahe_unsharp(img, params.get("clip_limit", 2.0), params.get("tile_grid", 8), params.get("amount", 1.0), params.get("radius", 2.0))
            done[key] = torch.from_numpy(out).permute(2, 0, 1).contiguous()
        enhanced[i] = done[key]
    return {"enhanced": enhanced}


# ---- 4. landmarks (dlib, or a trained run) ------------------------------------------------------------------
BACKENDS = ("dlib", "run")


def landmarks(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """68 points per face, on the original image (`image: raw`) or the enhanced one (`image: enhanced`).
    `backend: dlib`: dlib's predictor, started from the box `box` / `fallback` choose (predictor_box).
    `backend: run`: a trained landmark run (`run: {run_dir, box_mapping, passes}`, studykit.preprocessing.landmark_run)
    from the face's detector box. `box_source` records which box each face started from."""
    backend = str(params.get("backend", "dlib"))
    if backend not in BACKENDS:
        raise ValueError(f"landmarks.backend must be one of {BACKENDS}, got {backend!r}")
    image_key = {"raw": "images", "enhanced": "enhanced"}.get(str(params.get("image", "raw")))
    if image_key is None or image_key not in state:
        raise ValueError(f"landmarks.image must be raw or enhanced (enhanced needs the enhanced_tensors stage first), "
                         f"got {params.get('image')!r}")
    if backend == "run":
        return run_landmarks(state, params, folder, image_key)
    import dlib

    predictor = dlib.shape_predictor(str(predictor_path(params.get("predictor_path"))))
    source, fallback = str(params.get("box", "refine")), str(params.get("fallback", "mapped"))
    detector = dlib.get_frontal_face_detector() if source == "refine" else None
    n = len(state["paths"])
    points = torch.full((n, 68, 2), float("nan"))
    used = [""] * n
    greys: dict[int, tuple[np.ndarray, list[np.ndarray] | None]] = {}  # one conversion and detection per photo
    for i in tqdm(ok_indices(state), desc="dlib landmarks", leave=False):
        key = id(state[image_key][i])
        if key not in greys:
            grey = cv2.cvtColor(state[image_key][i].permute(1, 2, 0).numpy(), cv2.COLOR_RGB2GRAY)
            found = dlib_detect(detector, grey, params.get("refine_upsample", 1), params.get("max_side")) if detector else None
            greys[key] = (grey, found)
        grey, found = greys[key]
        box, used[i] = predictor_box(state["boxes"][i].numpy(), found, source, fallback, params.get("box_mapping"))
        points[i] = torch.from_numpy(dlib_points(predictor, grey, box))
    write_results_csv(folder / "results.csv", {**state, "landmarks": points})
    return {"landmarks": points, "box_source": used}


def run_landmarks(state: dict[str, Any], params: dict[str, Any], folder: Path, image_key: str) -> dict[str, Any]:
    from studykit.preprocessing.landmark_run import RunLandmarks

    run = dict(params.get("run") or {})
    if not run.get("run_dir"):
        raise ValueError("landmarks.backend=run needs landmarks.run.run_dir: a trained landmark run (experiment=face68_helen)")
    model = RunLandmarks(run["run_dir"], run.get("box_mapping"), int(run.get("passes", 2)))
    if model.num_points != 68:
        raise ValueError(f"{run['run_dir']} predicts {model.num_points} points; the face pipeline's landmark stage needs 68")
    n = len(state["paths"])
    points = torch.full((n, 68, 2), float("nan"))
    used = [""] * n
    greys: dict[int, np.ndarray] = {}
    for i in tqdm(ok_indices(state), desc="run landmarks", leave=False):
        key = id(state[image_key][i])
        if key not in greys:
            greys[key] = cv2.cvtColor(state[image_key][i].permute(1, 2, 0).numpy(), cv2.COLOR_RGB2GRAY)
        points[i] = torch.from_numpy(model.points(greys[key], state["boxes"][i].numpy()))
        used[i] = "run"
    write_results_csv(folder / "results.csv", {**state, "landmarks": points})
    return {"landmarks": points, "box_source": used}


def cell(value: float) -> str:
    """A coordinate or probability as a CSV cell: NaN (none) is an empty cell."""
    return "" if value != value else f"{value:.2f}"


def write_results_csv(path: Path, state: dict[str, Any]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "face_index", "width", "height", "box_x1", "box_y1", "box_x2", "box_y2", "box_prob"]
                    + [f"{a}{k}" for k in range(1, 69) for a in ("x", "y")] + ["status", "reason"])
    for i, image_path in enumerate(state["paths"]):
        h, w = state["orig_size"][i].tolist()
        box = state["boxes"][i].tolist() if "boxes" in state else [float("nan")] * 4
        pts = state["landmarks"][i].reshape(-1).tolist() if "landmarks" in state else [float("nan")] * 136
        face = int(state["face_index"][i]) if "face_index" in state else 0
        prob = float(state["box_prob"][i]) if "box_prob" in state else float("nan")
        writer.writerow([image_path, face, w, h, *map(cell, box), cell(prob)] + [cell(v) for v in pts] + [state["status"][i], state["reason"][i]])
    atomic_write_text(path, buf.getvalue())


# ---- 6-8. crop with padding, resize with exact coordinates ---------------------------------------------
def crop_resize(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Crop each face (box + padding) and resize it; the enhanced image when the pipeline made one
    (`image: enhanced`, the default), else the original."""
    size, padding = int(params.get("size", 512)), int(params.get("padding", 20))
    choice = str(params.get("image", "enhanced"))
    if choice not in ("enhanced", "raw"):
        raise ValueError(f"crop_resize.image must be enhanced or raw, got {choice!r}")
    source = state["enhanced"] if choice == "enhanced" and "enhanced" in state else state["images"]
    keep = ok_indices(state)
    images, boxes, points, crops = [], [], [], []
    for i in tqdm(keep, desc="crop + resize", leave=False):
        img = source[i].permute(1, 2, 0).numpy()
        h, w = img.shape[:2]
        crop = crop_box(state["boxes"][i].numpy(), padding, w, h)
        x0, y0, x1, y1 = crop
        resized = cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
        images.append(torch.from_numpy(resized).permute(2, 0, 1).contiguous())
        box = state["boxes"][i].numpy().reshape(2, 2)
        boxes.append(torch.from_numpy(map_points(box, crop, size).reshape(4)).float())
        if "landmarks" in state:
            points.append(torch.from_numpy(map_points(state["landmarks"][i].numpy(), crop, size)).float())
        crops.append(crop)
    out = {
        "face_images": torch.stack(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8),
        "face_boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
        "crop": torch.tensor(crops, dtype=torch.long).reshape(-1, 4),
        "kept": torch.tensor(keep, dtype=torch.long),
    }
    if "landmarks" in state:  # the landmark stage is optional (already-cropped faces may skip it)
        out["face_landmarks"] = torch.stack(points) if points else torch.zeros(0, 68, 2)
    return out


# ---- 9. landmark channel --------------------------------------------------------------------------------
def four_channel(state: dict[str, Any], params: dict[str, Any], folder: Path) -> dict[str, Any]:
    sigma = float(params.get("sigma", 3.0))
    faces = state["face_images"]
    size = faces.shape[-1]
    out = torch.zeros(faces.shape[0], 4, size, size, dtype=torch.uint8)
    for j in tqdm(range(faces.shape[0]), desc="landmark channel", leave=False):
        heat = landmark_heatmap(state["face_landmarks"][j].numpy(), size, sigma)
        out[j, :3] = faces[j]
        out[j, 3] = torch.from_numpy(np.round(heat * 255).astype(np.uint8))
    return {"four_channel": out}


STAGES = {stage.name: stage for stage in (
    Stage("raw_tensors", raw_tensors, makes=("images",)),
    Stage("mtcnn_boxes", mtcnn_boxes, needs=("images",), makes=("boxes",), version=2),
    Stage("full_frame_boxes", full_frame_boxes, needs=("images",), makes=("boxes",)),
    Stage("enhanced_tensors", enhanced_tensors, needs=("images",), makes=("enhanced",), version=2),
    Stage("landmarks", landmarks, needs=("images", "boxes"), makes=("landmarks",), version=2, extra_key=run_fingerprint),
    Stage("crop_resize", crop_resize, needs=("images", "boxes"), makes=("face_images",)),
    Stage("four_channel", four_channel, needs=("face_images", "landmarks"), makes=("four_channel",)),
)}
# stage names of runs saved before a rename
STAGE_ALIASES = {"adjusted_dataset": "crop_resize"}
