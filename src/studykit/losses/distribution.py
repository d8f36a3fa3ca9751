"""Losses for label-distribution learning (predicted vs annotators' vote distributions)."""

from __future__ import annotations

import torch
from torch import nn


class KLDivergenceLoss(nn.Module):
    """KL(target || softmax(logits)), batch mean. Stable: log-softmax of the logits, and the target clamped
    away from zero (then renormalised) so that empty classes give no log(0)."""

    tasks = ("distribution",)

    def __init__(self, eps: float = 1e-6, input: str = "logits"):
        super().__init__()
        if input != "logits":
            raise ValueError("the KL loss needs logits: use it with a distribution head (task=distribution)")
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.clamp_min(self.eps)
        target = target / target.sum(dim=-1, keepdim=True)
        return (target * (target.log() - torch.log_softmax(logits, dim=-1))).sum(dim=-1).mean()
