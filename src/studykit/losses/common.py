"""Losses that serve more than one task: squared and absolute error (coordinates or probabilities) and
weighted sums of named losses. Each loss class lists the tasks it serves in `tasks`."""

from __future__ import annotations

import torch
from torch import nn

INPUTS = ("values", "logits")


def _as_values(pred: torch.Tensor, input: str) -> torch.Tensor:
    """`logits` (a distribution head's raw output over the last axis) -> probabilities; `values` unchanged."""
    if input == "logits":
        return torch.softmax(pred, dim=-1)
    if input != "values":
        raise ValueError(f"loss input must be one of {INPUTS}, got {input!r}")
    return pred


class MSELoss(nn.Module):
    """Mean squared error: of coordinates (input=values; `scale` divides first, 1 = squared pixels) or of
    probabilities (input=logits: softmax of the prediction against a target distribution)."""

    tasks = ("landmarks", "distribution")

    def __init__(self, scale: float = 1.0, input: str = "values"):
        super().__init__()
        self.scale = float(scale)
        self.input = input
        _as_values(torch.zeros(1), input)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean(((_as_values(pred, self.input) - target) / self.scale) ** 2)


class L1Loss(nn.Module):
    """Mean absolute error, of values or (input=logits) of softmax probabilities."""

    tasks = ("landmarks", "distribution")

    def __init__(self, input: str = "values"):
        super().__init__()
        self.input = input
        _as_values(torch.zeros(1), input)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((_as_values(pred, self.input) - target).abs())


class CombinedLoss(nn.Module):
    """Weighted sum of named losses; the last components are kept for logging. It serves the tasks that all
    its terms serve (checked on the config by studykit.config.check_pairing)."""

    tasks = None

    def __init__(self, terms: dict[str, dict]):
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        self.losses = nn.ModuleDict({name: spec["loss"] for name, spec in terms.items()})
        self.weights = {name: float(spec.get("weight", 1.0)) for name, spec in terms.items()}
        self.last_components: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = {name: loss(pred, target) for name, loss in self.losses.items()}
        self.last_components = {name: value.detach() for name, value in parts.items()}
        return sum(self.weights[name] * value for name, value in parts.items())
