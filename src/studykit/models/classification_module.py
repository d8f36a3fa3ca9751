"""One LightningModule for expression classification: cross-entropy (optionally class-weighted) and the
full multiclass metric suite."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import torch
from torch import nn

from studykit.metrics.classification import classification_markdown, classification_metrics, classification_report
from studykit.models.base import PhasedModule
from studykit.models.distribution_module import ClassifierNet


class ClassificationModule(PhasedModule):
    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], loss: nn.Module, num_classes: int,
                 classes: Sequence[str] = (), in_chans: int = 3, stage: dict[str, Any] | None = None, **unused: Any):
        super().__init__(stage)
        self.save_hyperparameters(ignore=["loss"])
        self.net = ClassifierNet(backbone, head, num_classes, in_chans)
        self.loss_fn = loss
        self.classes = list(classes) or [str(i) for i in range(num_classes)]
        self.val_metrics = classification_metrics(num_classes)
        self.test_probs: list[torch.Tensor] = []
        self.test_targets: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["target"])
        if stage == "train":
            self.check_finite(loss, batch_idx)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=logits.shape[0])
        return loss, logits.softmax(-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self._step(batch, "val", batch_idx)[1], batch["target"])

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_metrics.compute().items():
            self.log(f"val/{key}", value, prog_bar=key in ("accuracy", "f1_macro"))
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_probs, self.test_targets = [], []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.test_probs.append(self._step(batch, "test", batch_idx)[1].detach().cpu())
        self.test_targets.append(batch["target"].detach().cpu())

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).softmax(-1)

    # ---- test report --------------------------------------------------------------------------------
    def test_report(self) -> dict[str, Any]:
        report = classification_report(torch.cat(self.test_probs), torch.cat(self.test_targets), self.classes)
        return {"primary_metric": {"name": "accuracy", "mode": "max"}, "classes": self.classes, **report}

    def test_markdown(self, report: dict[str, Any], title: str) -> str:
        return classification_markdown(report, title)

    def test_files(self, datamodule) -> dict[str, str]:
        from studykit.evaluation.runner import per_sample_csv

        probs, target = torch.cat(self.test_probs), torch.cat(self.test_targets)
        ids = datamodule.test_set.image_id[: probs.shape[0]]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["image_id", "label", "predicted"] + [f"p_{c}" for c in self.classes])
        for i, row_id in enumerate(ids):
            writer.writerow([row_id, self.classes[int(target[i])], self.classes[int(probs[i].argmax())]]
                            + [f"{v:.5f}" for v in probs[i].tolist()])
        correct = (probs.argmax(-1) == target).float().tolist()
        return {"test_predictions.csv": buf.getvalue(), "test_per_sample.csv": per_sample_csv(ids, correct, "correct")}
