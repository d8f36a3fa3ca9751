"""Inference for landmark models: test-time flip and shift augmentation, seed ensembles, per-image errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from studykit.data.landmark_datamodule import flip_permutation
from studykit.metrics.landmark import LandmarkErrorMetrics, nme_report, normalized_errors


def unflip(pred: torch.Tensor, perm: Sequence[int] | np.ndarray, width: int) -> torch.Tensor:
    """Map predictions made on a horizontally flipped image back to the original image.

    Coordinates are normalized by the cached image width W, whose flip (albumentations) is x -> (W-1) - x,
    i.e. x_n -> (W-1)/W - x_n; left/right pair labels are swapped back with `perm`.
    """
    out = pred.clone()
    out[..., 0] = (width - 1) / width - pred[..., 0]
    return out[:, torch.as_tensor(np.asarray(perm))]


def shift_offsets(shift_px: int) -> list[tuple[int, int]]:
    """The input shifts of shift TTA: none, then +-shift_px along x and along y (input pixels)."""
    if shift_px < 0:
        raise ValueError(f"tta_shift_px must be >= 0, got {shift_px}")
    if shift_px == 0:
        return [(0, 0)]
    return [(0, 0), (shift_px, 0), (-shift_px, 0), (0, shift_px), (0, -shift_px)]


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The batch (B, C, H, W) with its content moved by (dx, dy) pixels; the border is replicated, the size kept."""
    if dx == 0 and dy == 0:
        return images
    pad = max(abs(dx), abs(dy))
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="replicate")
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


@torch.no_grad()
def predict(module, loader, tta: bool = False, perm: Sequence[int] | None = None, width: int | None = None,
            device: str | torch.device = "cpu", shift_px: int = 0) -> torch.Tensor:
    """(N, K, 2) predictions in pixels of the original image (of the photo, for cropped samples). With `tta`, the mean over the image and its
    mirror; with `shift_px` > 0, over each of those shifted by 0 and +-shift_px input pixels along x and y too
    (`shift_offsets`), each prediction moved back by its shift - a heat-map head's cells (8 input pixels) then
    fall at other places of the anatomy, and their rounding errors partly average out."""
    if tta and (perm is None or width is None):
        raise ValueError("flip TTA needs the left/right permutation and the cached image width")
    module.eval().to(device)
    offsets = shift_offsets(int(shift_px))
    preds = []
    for batch in loader:
        images = batch["image"].to(device)
        h, w = images.shape[-2:]
        views = []
        for dx, dy in offsets:
            shifted = shift_images(images, dx, dy)
            back = torch.tensor([dx / w, dy / h], device=device, dtype=images.dtype)
            views.append(module(shifted) - back)
            if tta:  # the mirror of the shifted image is shifted by -dx: unflip first, then move back
                views.append(unflip(module(torch.flip(shifted, dims=[3])), perm, width) - back)
        pred = torch.stack(views).mean(0)
        offset = batch["offset"][:, None, :] if "offset" in batch else 0.0
        preds.append((pred.cpu() * batch["orig_size"][:, None, :] + offset).float())
    return torch.cat(preds)


def targets_px(dataset) -> torch.Tensor:
    """Ground truth of a cached split in pixels of the original image (of the photo, for cropped samples)."""
    width = dataset.images.shape[-1]
    height = dataset.images.shape[-2]
    scale = torch.tensor([width, height], dtype=torch.float32)
    return dataset.landmarks / scale * dataset.orig_size[:, None, :] + dataset.offset[:, None, :]


def per_image_errors(pred_px: torch.Tensor, target_px: torch.Tensor) -> np.ndarray:
    return torch.linalg.vector_norm(pred_px - target_px, dim=-1).mean(-1).numpy()


def error_report(pred_px: torch.Tensor, target_px: torch.Tensor, category: torch.Tensor, categories: Sequence[str],
                 names: Sequence[str] | None = None, nme_pair: Sequence[int] | None = None, failure_threshold: float = 0.08) -> dict:
    """Pixel errors (LandmarkErrorMetrics' report) and, with `nme_pair` (1-based), the NME figures."""
    metric = LandmarkErrorMetrics(categories, sync_on_compute=False)  # one process reports on all the predictions
    metric.update(pred_px, target_px, category)
    report = metric.report(names)
    if nme_pair:
        label = [names[nme_pair[0] - 1], names[nme_pair[1] - 1]] if names else [f"L{nme_pair[0]}", f"L{nme_pair[1]}"]
        report["nme"] = nme_report(normalized_errors(pred_px, target_px, nme_pair), label, failure_threshold)
    return report


def flip_perm_for(num_landmarks: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    return flip_permutation(num_landmarks, pairs)
