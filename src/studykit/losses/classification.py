"""Losses for classification."""

from __future__ import annotations

import torch
from torch import nn


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits and integer labels - or target distributions (the FER+ paper's cross-entropy
    on the votes); optional class weights and label smoothing."""

    tasks = ("classification", "distribution")

    def __init__(self, class_weights: list[float] | None = None, label_smoothing: float = 0.0, input: str = "logits"):
        super().__init__()
        if input != "logits":
            raise ValueError("cross-entropy needs logits: use it with a classification head (task=classification)")
        self.register_buffer("weight", torch.tensor(class_weights, dtype=torch.float32) if class_weights else None, persistent=False)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = target.is_floating_point() and target.shape == logits.shape
        return nn.functional.cross_entropy(logits, target if soft else target.long(), weight=self.weight, label_smoothing=self.label_smoothing)
