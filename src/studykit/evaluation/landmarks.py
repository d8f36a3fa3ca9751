"""Inference for landmark models: test-time flip augmentation, seed ensembles, per-image errors."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from studykit.data.landmark_datamodule import flip_permutation
from studykit.metrics.landmark import LandmarkErrorMetrics


def unflip(pred: torch.Tensor, perm: Sequence[int] | np.ndarray, width: int) -> torch.Tensor:
    """Map predictions made on a horizontally flipped image back to the original image.

    Coordinates are normalized by the cached image width W, whose flip (albumentations) is x -> (W-1) - x,
    i.e. x_n -> (W-1)/W - x_n; left/right pair labels are swapped back with `perm`.
    """
    out = pred.clone()
    out[..., 0] = (width - 1) / width - pred[..., 0]
    return out[:, torch.as_tensor(np.asarray(perm))]


@torch.no_grad()
def predict(module, loader, tta: bool = False, perm: Sequence[int] | None = None, width: int | None = None,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, K, 2) predictions in pixels of the original image; with `tta`, the mean over the image and its mirror."""
    module.eval().to(device)
    preds = []
    for batch in loader:
        images = batch["image"].to(device)
        pred = module(images)
        if tta:
            if perm is None or width is None:
                raise ValueError("flip TTA needs the left/right permutation and the cached image width")
            pred = 0.5 * (pred + unflip(module(torch.flip(images, dims=[3])), perm, width))
        preds.append((pred.cpu() * batch["orig_size"][:, None, :]).float())
    return torch.cat(preds)


def targets_px(dataset) -> torch.Tensor:
    """Ground truth of a cached split in pixels of the original image."""
    width = dataset.images.shape[-1]
    height = dataset.images.shape[-2]
    scale = torch.tensor([width, height], dtype=torch.float32)
    return dataset.landmarks / scale * dataset.orig_size[:, None, :]


def per_image_errors(pred_px: torch.Tensor, target_px: torch.Tensor) -> np.ndarray:
    return torch.linalg.vector_norm(pred_px - target_px, dim=-1).mean(-1).numpy()


def error_report(pred_px: torch.Tensor, target_px: torch.Tensor, category: torch.Tensor, categories: Sequence[str]) -> dict:
    metric = LandmarkErrorMetrics(categories)
    metric.update(pred_px, target_px, category)
    return metric.report()


def flip_perm_for(num_landmarks: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    return flip_permutation(num_landmarks, pairs)
