"""One LightningModule for label-distribution learning: a softmax head predicts the vote distribution."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from studykit.metrics.distribution import DistributionMetrics, distribution_markdown
from studykit.models.logits_module import ClassifierNet, LogitsModule

__all__ = ["ClassifierNet", "DistributionModule"]


class DistributionModule(LogitsModule):
    """Losses get logits and target distributions; metrics get softmax probabilities."""

    progress_metrics = ("kl", "accuracy")

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), stage: dict[str, Any] | None = None):
        super().__init__(backbone, head, loss, num_classes, classes, 3, stage, DistributionMetrics(classes))
        self.save_hyperparameters(ignore=["loss"])

    def test_metric(self) -> DistributionMetrics:
        metric = DistributionMetrics(self.classes)
        metric.update(torch.cat(self.test_probs), torch.cat(self.test_targets))
        return metric

    def test_report(self) -> dict[str, Any]:
        return {"primary_metric": {"name": "kl", "mode": "min"}, "classes": self.classes, **self.test_metric().report()}

    def test_markdown(self, report: dict[str, Any], title: str) -> str:
        return distribution_markdown(report, title)
