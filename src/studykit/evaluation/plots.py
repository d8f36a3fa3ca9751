"""Visual evaluation of landmark predictions: one overlay per image and summary plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from studykit.utils.io import atomic_save_figure, atomic_write_image, make_dirs  # noqa: E402

GREEN, RED = (0, 200, 0), (0, 0, 255)  # BGR


def overlay(image: np.ndarray, target: np.ndarray | None, pred: np.ndarray, scale: float = 2) -> np.ndarray:
    """Grey image (H, W) with ground truth (green; none for unlabelled images) and prediction (red) points,
    joined by thin lines."""
    canvas = cv2.cvtColor(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    for k, p in enumerate(pred * scale):
        p = tuple(int(round(v)) for v in p)
        if target is not None:
            t = tuple(int(round(v)) for v in target[k] * scale)
            cv2.line(canvas, t, p, (0, 200, 255), 1, cv2.LINE_AA)
            cv2.circle(canvas, t, 4, GREEN, -1, cv2.LINE_AA)
        cv2.circle(canvas, p, 4, RED, -1, cv2.LINE_AA)
        cv2.putText(canvas, str(k + 1), (p[0] + 5, p[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, RED, 1, cv2.LINE_AA)
    return canvas


def image_name(category: str, image_id: str, error: float) -> str:
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id)
    return f"{category}_{safe_id}_error_{error:.2f}px.png"


def write_overlays(folder: Path, images: np.ndarray, targets: np.ndarray, preds: np.ndarray, categories: Sequence[str],
                   image_ids: Sequence[str], errors: np.ndarray) -> list[Path]:
    """One PNG per image, named {Category}_{ImageID}_error_{X.XX}px.png; coordinates in the images' pixels."""
    make_dirs(folder)
    paths = []
    for img, t, p, cat, iid, err in zip(images, targets, preds, categories, image_ids, errors):
        path = folder / image_name(cat, iid, float(err))
        atomic_write_image(path, overlay(img, t, p))
        paths.append(path)
    return paths


def summary_plots(folder: Path, point_errors: np.ndarray, categories: Sequence[str], images: np.ndarray,
                  targets: np.ndarray, preds: np.ndarray, image_ids: Sequence[str], title: str = "") -> dict[str, Path]:
    """Error per landmark, per category, the cumulative distribution, and the 10 worst images."""
    make_dirs(folder)
    per_image = point_errors.mean(1)
    out = {}

    fig, ax = plt.subplots(figsize=(8, 4))
    k = point_errors.shape[1]
    ax.bar(np.arange(1, k + 1), point_errors.mean(0), yerr=point_errors.std(0), capsize=3, color="tab:blue")
    ax.set(xlabel="landmark", ylabel="error (px)", title=f"Error per landmark {title}", xticks=np.arange(1, k + 1))
    out["per_landmark"] = _save(fig, folder / "error_per_landmark.png")

    names = sorted(set(categories))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([per_image[np.asarray(categories) == n] for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel="per-image mean error (px)", title=f"Error per category {title}")
    out["per_category"] = _save(fig, folder / "error_per_category.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for data, label in ((per_image, "per image (mean of points)"), (point_errors.ravel(), "per point")):
        xs = np.sort(data)
        ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=label)
    for edge in (5, 8.5, 15):
        ax.axvline(edge, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="error (px)", ylabel="fraction <= error", title=f"Cumulative error distribution {title}")
    ax.legend()
    out["cdf"] = _save(fig, folder / "error_cdf.png")

    worst = np.argsort(per_image)[::-1][:10]
    fig, axes = gallery(len(worst), cols=5, cell=(3.0, 3.2))
    for ax, i in zip(axes, worst):
        ax.imshow(cv2.cvtColor(overlay(images[i], targets[i], preds[i], scale=1), cv2.COLOR_BGR2RGB))
        ax.set_title(f"{image_ids[i]}\n{per_image[i]:.2f} px", fontsize=8)
    fig.suptitle(f"10 worst test images {title} (green: truth, red: prediction)")
    out["worst"] = _save(fig, folder / "worst_10.png")
    return out


def gallery(n: int, cols: int, cell: tuple[float, float]):
    """A figure with n image cells in rows of `cols`, axes off; returns (figure, flat list of axes)."""
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, list(axes.ravel())


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
