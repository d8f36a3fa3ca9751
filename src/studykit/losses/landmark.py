"""Geometric losses for landmark regression.

Every loss takes predictions and targets as (B, K, 2) coordinates in pixels and returns a scalar. Landmark
indices in configs are 1-based, as in the annotation's documentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _zero_based(pairs: Sequence[Sequence[int]]) -> torch.Tensor:
    idx = torch.as_tensor([list(p) for p in pairs], dtype=torch.long)
    if idx.numel() and idx.min() < 1:
        raise ValueError(f"landmark indices are 1-based, got {pairs}")
    return idx - 1


class WingLoss(nn.Module):
    """Wing loss (Feng et al., CVPR 2018) per coordinate: log-shaped below `w` pixels, L1 beyond."""

    tasks = ("landmarks",)

    def __init__(self, w: float = 10.0, epsilon: float = 2.0):
        super().__init__()
        if w <= 0 or epsilon <= 0:
            raise ValueError("wing loss needs w > 0 and epsilon > 0")
        self.w = float(w)
        self.epsilon = float(epsilon)
        self.c = self.w - self.w * math.log(1.0 + self.w / self.epsilon)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = (pred - target).abs()
        small = self.w * torch.log1p(x / self.epsilon)
        return torch.where(x < self.w, small, x - self.c).mean()


def mediastinal_axis(points: torch.Tensor, axis_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total-least-squares line through the axis landmarks: (centre (B,2), unit direction (B,2))."""
    axis_pts = points[:, axis_idx]  # (B, A, 2)
    centre = axis_pts.mean(dim=1)
    d = axis_pts - centre[:, None]
    sxx = (d[..., 0] ** 2).sum(1)
    syy = (d[..., 1] ** 2).sum(1)
    sxy = (d[..., 0] * d[..., 1]).sum(1)
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    direction = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    return centre, direction


def reflect(points: torch.Tensor, centre: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Mirror (B, N, 2) points about the line through `centre` along unit `direction`."""
    rel = points - centre[:, None]
    along = (rel * direction[:, None]).sum(-1, keepdim=True)
    return centre[:, None] + 2 * along * direction[:, None] - rel


class SymmetryLoss(nn.Module):
    """Bilateral symmetry about the mediastinal axis.

    Each left landmark, mirrored about the axis fitted through `axis` landmarks, should fall on its right
    partner: the loss is the mean distance (pixels) between them. With `relative_to_target`, the
    prediction's asymmetry vector is compared with the ground truth's instead, so a truly asymmetric
    chest is not pushed towards symmetry.
    """

    tasks = ("landmarks",)

    def __init__(
        self,
        pairs: Sequence[Sequence[int]] = ((3, 4), (5, 6), (7, 8), (12, 13), (14, 15)),
        axis: Sequence[int] = (1, 9, 10, 11, 2),
        relative_to_target: bool = False,
    ):
        super().__init__()
        self.register_buffer("pairs", _zero_based(pairs), persistent=False)
        self.register_buffer("axis", _zero_based([axis])[0], persistent=False)
        self.relative_to_target = relative_to_target

    def asymmetry(self, points: torch.Tensor) -> torch.Tensor:
        centre, direction = mediastinal_axis(points, self.axis)
        mirrored_left = reflect(points[:, self.pairs[:, 0]], centre, direction)
        return mirrored_left - points[:, self.pairs[:, 1]]  # (B, P, 2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        asym = self.asymmetry(pred)
        if self.relative_to_target:
            asym = asym - self.asymmetry(target)
        return torch.linalg.vector_norm(asym, dim=-1).mean()


class DistancePreservationLoss(nn.Module):
    """Key anatomical distances of the prediction should equal the ground truth's (mean |d_pred - d_true|)."""

    tasks = ("landmarks",)

    def __init__(
        self,
        pairs: Sequence[Sequence[int]] = (
            (1, 2),  # mediastinum length
            (3, 4), (5, 6), (7, 8), (12, 13), (14, 15),  # widths across the chest
            (12, 14), (13, 15),  # lung heights, left and right
        ),
    ):
        super().__init__()
        self.register_buffer("pairs", _zero_based(pairs), persistent=False)

    @staticmethod
    def distances(points: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(points[:, pairs[:, 0]] - points[:, pairs[:, 1]], dim=-1)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.distances(pred, self.pairs) - self.distances(target, self.pairs)).abs().mean()


def gaussian_maps(points: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(B, K, 2) normalized points -> (B, K, H, W) Gaussians (sigma in map cells) that sum to 1."""
    ys = (torch.arange(height, device=points.device, dtype=points.dtype) + 0.5) / height
    xs = (torch.arange(width, device=points.device, dtype=points.dtype) + 0.5) / width
    dx = (xs[None, None, None, :] - points[..., 0, None, None]) * width
    dy = (ys[None, None, :, None] - points[..., 1, None, None]) * height
    maps = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return maps / maps.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def js_divergence_maps(probs: torch.Tensor, target_norm: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Jensen-Shannon divergence between predicted heat maps and Gaussians at the targets (DSNT's regulariser)."""
    target = gaussian_maps(target_norm, probs.shape[-2], probs.shape[-1], sigma)
    mix = 0.5 * (probs + target)
    eps = 1e-12

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * ((p + eps).log() - (q + eps).log())).sum(dim=(-2, -1))

    return (0.5 * kl(probs, mix) + 0.5 * kl(target, mix)).mean()
