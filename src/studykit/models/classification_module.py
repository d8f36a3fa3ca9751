"""One LightningModule for expression classification: cross-entropy (optionally class-weighted) and the
full multiclass metric suite."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from studykit.metrics.classification import classification_markdown, classification_metrics, classification_report
from studykit.models.logits_module import LogitsModule


class ClassificationModule(LogitsModule):
    progress_metrics = ("accuracy", "f1_macro")

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), in_chans: int = 3, stage: dict[str, Any] | None = None):
        super().__init__(backbone, head, loss, num_classes, classes, in_chans, stage, classification_metrics(num_classes))
        self.save_hyperparameters(ignore=["loss"])

    def test_report(self) -> dict[str, Any]:
        report = classification_report(torch.cat(self.test_probs), torch.cat(self.test_targets), self.classes)
        return {"primary_metric": {"name": "accuracy", "mode": "max"}, "classes": self.classes, **report}

    def test_markdown(self, report: dict[str, Any], title: str) -> str:
        return classification_markdown(report, title)
