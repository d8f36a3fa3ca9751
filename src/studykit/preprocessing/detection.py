"""Face detection: MTCNN (facenet-pytorch) on a photo shrunk to a working size, and the choice of faces to keep
among its detections. Boxes are x1, y1, x2, y2 in the photo's pixels."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

FACE_SELECTION = ("most_confident", "largest", "most_central", "prob_area", "all")


def select_faces(boxes: np.ndarray, probs: np.ndarray, width: int, height: int, policy: str) -> list[int]:
    """Indices of the faces to keep among a photo's detections. One face per photo: the most confident,
    the largest, the one whose centre is nearest the photo's centre, or the largest probability x area;
    `all`: every face, most confident first."""
    if policy not in FACE_SELECTION:
        raise ValueError(f"mtcnn_boxes.select must be one of {FACE_SELECTION}, got {policy!r}")
    if policy == "all":
        return [int(i) for i in np.argsort(-probs, kind="stable")]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if policy == "most_confident":
        score = probs
    elif policy == "largest":
        score = area
    elif policy == "prob_area":
        score = probs * area
    else:
        centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - width / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2], 1)
        score = -np.hypot(centre[:, 0], centre[:, 1])
    return [int(np.argmax(score))]


def downscaled(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """The image shrunk so its long side is at most `max_side` (detectors on large photos cost seconds per
    megapixel), and the factor that maps its coordinates back to the original."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= int(max_side):
        return image, 1.0
    scale = int(max_side) / max(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), 1.0 / scale


def mtcnn_detect(detector, image: np.ndarray, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All MTCNN faces of an RGB image: boxes (N, 4) x1, y1, x2, y2 in its pixels, probabilities (N,)."""
    small, back = downscaled(image, max_side)
    found, p = detector.detect(Image.fromarray(small))
    if found is None or len(found) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    # numpy 2 returns object arrays: make them float
    return np.asarray(found, dtype=np.float32).reshape(-1, 4) * back, np.asarray(p, dtype=np.float32).reshape(-1)
