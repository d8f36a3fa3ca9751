"""One LightningModule for label-distribution learning: a softmax head predicts the vote distribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from studykit.metrics.distribution import DistributionMetrics
from studykit.models.logits_module import ClassifierNet, LogitsModule

__all__ = ["ClassifierNet", "DistributionModule"]


class DistributionModule(LogitsModule):
    """Losses get logits and target distributions; metrics get softmax probabilities."""

    progress_metrics = ("kl", "accuracy")

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), stage: dict[str, Any] | None = None):
        super().__init__(backbone, head, loss, num_classes, classes, 3, stage, DistributionMetrics(classes))
        self.save_hyperparameters(ignore=["loss"])
