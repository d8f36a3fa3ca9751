"""One LightningModule for label-distribution learning: a softmax head predicts the vote distribution."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from studykit.metrics.distribution import DistributionMetrics, distribution_markdown
from studykit.models.logits_module import ClassifierNet, LogitsModule
from studykit.utils.io import csv_text

__all__ = ["ClassifierNet", "DistributionModule"]


class DistributionModule(LogitsModule):
    """Losses get logits and target distributions; metrics get softmax probabilities."""

    progress_metrics = ("kl", "accuracy")

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), stage: dict[str, Any] | None = None, **unused: Any):
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

    def test_files(self, datamodule) -> dict[str, str]:
        from studykit.evaluation.runner import per_sample_csv

        pred, target = torch.cat(self.test_probs), torch.cat(self.test_targets)
        ids = datamodule.test_set.image_id[: pred.shape[0]]
        header = ["image_id"] + [f"pred_{c}" for c in self.classes] + [f"votes_{c}" for c in self.classes]
        rows = ([row_id] + [f"{v:.5f}" for v in pred[i].tolist()] + [f"{v:.5f}" for v in target[i].tolist()] for i, row_id in enumerate(ids))
        kl = self.test_metric().scores()["kl"].tolist()
        return {"test_predictions.csv": csv_text(header, rows), "test_per_sample.csv": per_sample_csv(ids, kl, "kl")}
