"""One LightningModule for expression classification: cross-entropy (optionally class-weighted) and the
full multiclass metric suite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from studykit.metrics.classification import classification_metrics
from studykit.models.logits_module import LogitsModule


class ClassificationModule(LogitsModule):
    progress_metrics = ("accuracy", "f1_macro")

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), in_chans: int = 3, stage: dict[str, Any] | None = None):
        super().__init__(backbone, head, loss, num_classes, classes, in_chans, stage, classification_metrics(num_classes))
        self.save_hyperparameters(ignore=["loss"])
