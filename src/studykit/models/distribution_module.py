"""One LightningModule for label-distribution learning: a softmax head predicts the vote distribution."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import torch
from torch import nn

from studykit.metrics.distribution import DistributionMetrics, distribution_markdown
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


class DistributionModule(PhasedModule):
    """Losses get logits and target distributions; metrics get softmax probabilities."""

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), stage: dict[str, Any] | None = None, **unused: Any):
        super().__init__(stage)
        self.save_hyperparameters(ignore=["loss"])
        self.net = ClassifierNet(backbone, head, num_classes)
        self.loss_fn = loss
        self.classes = list(classes)
        self.val_metrics = DistributionMetrics(self.classes)
        self.test_metrics = DistributionMetrics(self.classes, sync_on_compute=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

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
            self.log(f"val/{key}", value, prog_bar=key in ("kl", "accuracy"))
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_metrics.update(self._step(batch, "test", batch_idx)[1], batch["target"])

    def on_test_epoch_end(self) -> None:
        for key, value in self.test_metrics.compute().items():
            self.log(f"test/{key}", value)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).softmax(-1)

    # ---- test report --------------------------------------------------------------------------------
    def test_report(self) -> dict[str, Any]:
        return {"primary_metric": {"name": "kl", "mode": "min"}, "classes": self.classes, **self.test_metrics.report()}

    def test_markdown(self, report: dict[str, Any], title: str) -> str:
        return distribution_markdown(report, title)

    def test_files(self, datamodule) -> dict[str, str]:
        from studykit.evaluation.runner import per_sample_csv

        pred = torch.cat(self.test_metrics.pred).cpu()
        target = torch.cat(self.test_metrics.target).cpu()
        ids = datamodule.test_set.image_id[: pred.shape[0]]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["image_id"] + [f"pred_{c}" for c in self.classes] + [f"votes_{c}" for c in self.classes])
        for i, row_id in enumerate(ids):
            writer.writerow([row_id] + [f"{v:.5f}" for v in pred[i].tolist()] + [f"{v:.5f}" for v in target[i].tolist()])
        kl = self.test_metrics.scores()["kl"].cpu().tolist()
        return {"test_predictions.csv": buf.getvalue(), "test_per_sample.csv": per_sample_csv(ids, kl, "kl")}
