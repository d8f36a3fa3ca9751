"""What every task's LightningModule shares: phase handling (freezing, optimizer groups, scheduler)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn


class PhasedModule(L.LightningModule):
    """A LightningModule with `self.net.backbone` and a head, trained in phases (`set_stage`).

    A phase dict: freeze_backbone, epochs, optimizer {name, lr, backbone_lr, weight_decay, momentum},
    scheduler {name: none | cosine, eta_min, t_max}. Subclasses define the steps and the test report.
    """

    net: nn.Module

    def __init__(self, stage: dict[str, Any] | None = None):
        super().__init__()
        self.stage_cfg: dict[str, Any] = dict(stage or {"freeze_backbone": False, "optimizer": {"lr": 1e-3}})

    def set_stage(self, stage: dict[str, Any]) -> None:
        """Switch to a training phase: freezes or thaws the backbone and sets the optimizer for it."""
        self.stage_cfg = dict(stage)
        self.net.backbone.requires_grad_(not self.backbone_frozen)
        self.train()  # undo the eval mode a frozen backbone was left in by an earlier phase

    @property
    def backbone_frozen(self) -> bool:
        return bool(self.stage_cfg.get("freeze_backbone", False))

    def head_parameters(self) -> list[nn.Parameter]:
        backbone_ids = {id(p) for p in self.net.backbone.parameters()}
        return [p for p in self.net.parameters() if id(p) not in backbone_ids]

    def on_train_epoch_start(self) -> None:
        # Lightning keeps each submodule's train/eval mode across fits, so set it every epoch. Frozen means
        # frozen: the backbone's BatchNorm running statistics stay those of the pretrained weights.
        self.net.backbone.train(not self.backbone_frozen)

    def configure_optimizers(self):
        opt = dict(self.stage_cfg.get("optimizer", {}))
        lr = float(opt.get("lr", 1e-3))
        weight_decay = float(opt.get("weight_decay", 0.0))
        groups = [{"params": self.head_parameters(), "lr": lr, "name": "head"}]
        if not self.backbone_frozen:
            backbone_lr = opt.get("backbone_lr")
            groups.append({"params": list(self.net.backbone.parameters()),
                           "lr": float(backbone_lr if backbone_lr is not None else lr), "name": "backbone"})
        name = opt.get("name", "adam").lower()
        if name == "adam":
            optimizer = torch.optim.Adam(groups, weight_decay=weight_decay)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
        elif name == "sgd":
            optimizer = torch.optim.SGD(groups, momentum=float(opt.get("momentum", 0.9)), weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer.name must be adam, adamw or sgd, got {name!r}")
        sched = dict(self.stage_cfg.get("scheduler") or {})
        kind = sched.get("name", "none")
        if kind == "none":
            return optimizer
        if kind == "cosine":
            t_max = int(sched.get("t_max") or self.stage_cfg.get("epochs") or 1)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=float(sched.get("eta_min", 0.0)))
        else:
            raise ValueError(f"scheduler.name must be none or cosine, got {kind!r}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step}, batch {batch_idx}; "
                "stopping (the last good checkpoint is kept)"
            )

    # ---- the test report protocol used by studykit.training.run.test_and_report ------------------------
    def test_report(self) -> dict[str, Any]:
        """Metrics of the last test epoch as plain numbers; must hold `primary_metric`."""
        raise NotImplementedError

    def test_markdown(self, report: dict[str, Any], title: str) -> str:
        raise NotImplementedError

    def test_files(self, datamodule: L.LightningDataModule) -> dict[str, str]:
        """Extra text files for the run folder: file name -> content (predictions, per-sample scores)."""
        return {}
