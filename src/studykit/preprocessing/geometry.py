"""Face crop geometry: the crop around a box, coordinates mapped exactly through crop + resize, and the
landmark heat map (the 4th input channel)."""

from __future__ import annotations

import numpy as np


def crop_box(box: np.ndarray, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """MTCNN box grown by `padding` pixels on each side, clipped to the image: (x0, y0, x1, y1), x1/y1 exclusive."""
    x0 = max(0, int(np.floor(box[0])) - padding)
    y0 = max(0, int(np.floor(box[1])) - padding)
    x1 = min(width, int(np.ceil(box[2])) + padding)
    y1 = min(height, int(np.ceil(box[3])) + padding)
    return x0, y0, x1, y1


def map_points(points: np.ndarray, crop: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Pixel-index coordinates in the image -> in the crop resized to size x size (cv2.resize's mapping:
    destination centre j + 0.5 samples source (j + 0.5) * scale)."""
    x0, y0, x1, y1 = crop
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    out = np.array(points, dtype=np.float64, copy=True)
    out[..., 0] = (out[..., 0] - x0 + 0.5) * sx - 0.5
    out[..., 1] = (out[..., 1] - y0 + 0.5) * sy - 0.5
    return out


def landmark_heatmap(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Max over Gaussians (peak 1) at the points: a (size, size) map in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    heat = np.zeros((size, size), dtype=np.float32)
    radius = int(np.ceil(3 * sigma))
    for x, y in points:
        if not np.isfinite([x, y]).all():
            continue
        xa, xb = max(0, int(x) - radius), min(size, int(x) + radius + 2)
        ya, yb = max(0, int(y) - radius), min(size, int(y) + radius + 2)
        if xa >= xb or ya >= yb:
            continue
        g = np.exp(-((xs[ya:yb, xa:xb] - x) ** 2 + (ys[ya:yb, xa:xb] - y) ** 2) / (2 * sigma**2))
        heat[ya:yb, xa:xb] = np.maximum(heat[ya:yb, xa:xb], g)
    return heat
