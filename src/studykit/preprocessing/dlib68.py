"""dlib's 68-point face landmarks: the shape predictor file, its HOG face detector, and the box the predictor
starts from (dlib's own box where it finds the face, else the MTCNN box through a fitted mapping).
Coordinates are pixel indices (pixel i has its centre at i), dlib's convention."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from studykit.preprocessing.detection import downscaled


def predictor_path(configured: str | None) -> Path:
    """The 68-point model: a configured path, else the file shipped in PyPI's face-recognition-models."""
    if configured:
        path = Path(configured).expanduser()
    else:
        spec = importlib.util.find_spec("face_recognition_models")  # its __init__ needs pkg_resources: don't import
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("dlib's 68-point model not found: pip install face-recognition-models, or set the predictor path")
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise FileNotFoundError(f"dlib shape predictor file {path} not found")
    return path


def dlib_points(predictor, grey: np.ndarray, box: np.ndarray) -> np.ndarray:
    import dlib

    left, top, right, bottom = (int(round(v)) for v in box)
    shape = predictor(grey, dlib.rectangle(left, top, right, bottom))
    return np.array([[shape.part(k).x, shape.part(k).y] for k in range(shape.num_parts)], dtype=np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


BOX_SOURCES = ("refine", "mapped", "mtcnn")
FALLBACKS = ("mapped", "mtcnn")


def map_box(box: np.ndarray, mapping: dict[str, float]) -> np.ndarray:
    """An MTCNN box -> the box dlib's predictor expects: centre shifted by (dx * width, dy * height), size
    scaled by (sw, sh) - the transform fitted by `fit_box_mapping`."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + float(mapping["dx"]) * w, (y1 + y2) / 2 + float(mapping["dy"]) * h
    half_w, half_h = float(mapping["sw"]) * w / 2, float(mapping["sh"]) * h / 2
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dtype=np.float32)


def fit_box_mapping(mtcnn: np.ndarray, dlib_boxes: np.ndarray) -> dict[str, float]:
    """The median shift and scale that take MTCNN boxes (N, 4) to the dlib boxes (N, 4) of the same faces;
    medians, so a few bad pairs do not move it."""
    mtcnn, dlib_boxes = np.asarray(mtcnn, np.float64).reshape(-1, 4), np.asarray(dlib_boxes, np.float64).reshape(-1, 4)
    if len(mtcnn) == 0:
        raise ValueError("fit_box_mapping needs at least one pair of boxes")
    mw, mh = mtcnn[:, 2] - mtcnn[:, 0], mtcnn[:, 3] - mtcnn[:, 1]
    dw, dh = dlib_boxes[:, 2] - dlib_boxes[:, 0], dlib_boxes[:, 3] - dlib_boxes[:, 1]
    dx = ((dlib_boxes[:, 0] + dlib_boxes[:, 2]) - (mtcnn[:, 0] + mtcnn[:, 2])) / 2 / mw
    dy = ((dlib_boxes[:, 1] + dlib_boxes[:, 3]) - (mtcnn[:, 1] + mtcnn[:, 3])) / 2 / mh
    return {"dx": float(np.median(dx)), "dy": float(np.median(dy)), "sw": float(np.median(dw / mw)), "sh": float(np.median(dh / mh))}


def dlib_detect(detector, grey: np.ndarray, upsample: int = 1, max_side: int | None = None) -> list[np.ndarray]:
    """dlib's HOG faces of a grey image as x1, y1, x2, y2 boxes in its pixels."""
    small, back = downscaled(grey, max_side)
    return [np.array([d.left(), d.top(), d.right(), d.bottom()], dtype=np.float32) * back for d in detector(small, int(upsample))]


def predictor_box(box: np.ndarray, detections: list[np.ndarray] | None = None, source: str = "refine",
                  fallback: str = "mapped", mapping: dict[str, float] | None = None) -> tuple[np.ndarray, str]:
    """The box to start dlib's shape predictor from, and where it came from. The predictor was trained on
    dlib's own (HOG) face boxes, which sit lower and squarer than MTCNN's. `refine`: dlib's detection that
    overlaps the MTCNN box best (IoU > 0.3), else the fallback; `mapped`: the MTCNN box through the fitted
    mapping; `mtcnn`: the MTCNN box itself. (Detecting on a crop around the box is not used: HOG detections
    change with the crop's alignment.)"""
    if source not in BOX_SOURCES or fallback not in FALLBACKS:
        raise ValueError(f"landmarks.box must be one of {BOX_SOURCES} and landmarks.fallback one of {FALLBACKS}, "
                         f"got {source!r} / {fallback!r}")
    if source == "refine":
        best = max(detections or [], key=lambda d: iou(d, box), default=None)
        if best is not None and iou(best, box) > 0.3:
            return best, "dlib"
        source = fallback
    if source == "mapped":
        if not mapping:
            raise ValueError("landmarks.box_mapping (dx, dy, sw, sh) is needed for the mapped box")
        return map_box(box, mapping), "mapped"
    return np.asarray(box, dtype=np.float32), "mtcnn"
