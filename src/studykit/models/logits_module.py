"""Shared by the tasks whose head outputs logits (classification, label distributions): the network and the
training and validation steps. Subclasses set the validation metrics; tests and reports belong to the Tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from studykit.models.backbones import create_backbone
from studykit.models.base import PhasedModule
from studykit.models.heads import MLPHead


class ClassifierNet(nn.Module):
    """Backbone (global pooled) -> MLP -> N logits; `features` gives the embedding before the head."""

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], num_classes: int, in_chans: int = 3):
        super().__init__()
        head = {k: v for k, v in head.items() if k not in ("type", "output")}
        self.backbone = create_backbone(**backbone, in_chans=in_chans, global_pool="avg")
        self.head = MLPHead(self.backbone.num_features, num_classes, output="none", **head)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class LogitsModule(PhasedModule):
    """Losses get logits and targets; `val_metrics` (anything with update(probs, target) and compute() -> dict)
    gets softmax probabilities."""

    progress_metrics: tuple[str, ...] = ()

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str], in_chans: int, stage: dict[str, Any] | None, val_metrics: nn.Module):
        super().__init__(stage)
        self.net = ClassifierNet(backbone, head, num_classes, in_chans)
        self.loss_fn = loss
        self.classes = list(classes) or [str(i) for i in range(num_classes)]
        self.val_metrics = val_metrics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.in_layout(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features the head sees (for embedding maps)."""
        return self.net.features(self.in_layout(x))

    def _step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["target"])
        if stage == "train":
            self.check_finite(loss, batch_idx)
        bs = logits.shape[0]
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=bs)
        if stage == "train":
            for name, value in getattr(self.loss_fn, "last_components", {}).items():
                self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss, logits.softmax(-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self._step(batch, "val", batch_idx)[1], batch["target"])

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_metrics.compute().items():
            self.log(f"val/{key}", value, prog_bar=key in self.progress_metrics)
        self.val_metrics.reset()
