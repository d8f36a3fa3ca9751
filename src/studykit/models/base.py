"""What every task's LightningModule shares: phase handling (freezing, optimizer groups, scheduler) and the
memory layout of the network and its input batches."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn


class PhasedModule(L.LightningModule):
    """A LightningModule with `self.net.backbone` and a head, trained in phases (`set_stage`).

    A phase dict: freeze_backbone, epochs, optimizer {name, lr, backbone_lr, weight_decay, momentum},
    scheduler {name: none | cosine | warmup_cosine | onecycle, eta_min, t_max, warmup}. Subclasses define
    the steps and the test report.
    """

    net: nn.Module

    def __init__(self, stage: dict[str, Any] | None = None):
        super().__init__()
        self.stage_cfg: dict[str, Any] = dict(stage or {"freeze_backbone": False, "optimizer": {"lr": 1e-3}})
        self.channels_last = False

    # ---- memory layout --------------------------------------------------------------------------------
    def use_channels_last(self, enabled: bool = True) -> None:
        """Keep the weights and every input batch in channels_last (NHWC). On CPU, oneDNN's convolutions -
        depthwise ones above all - run far faster in that layout; values are unchanged."""
        self.channels_last = bool(enabled)
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and isinstance(batch, dict):
            image = batch.get("image")
            if isinstance(image, torch.Tensor) and image.dim() == 4:
                batch["image"] = image.contiguous(memory_format=torch.channels_last)
        return batch

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
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if kind not in ("warmup_cosine", "onecycle"):
            raise ValueError(f"scheduler.name must be none, cosine, warmup_cosine or onecycle, got {kind!r}")
        # per optimizer step: short phases of small data sets have few epochs, so warm-up is counted in steps
        total = int(sched.get("total_steps") or self.trainer.estimated_stepping_batches)
        warmup = float(sched.get("warmup", 0.1))
        if kind == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in groups], total_steps=total, pct_start=warmup,
                div_factor=float(sched.get("div_factor", 25.0)), final_div_factor=float(sched.get("final_div_factor", 1e4)))
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, warmup_cosine_factor(total, warmup_steps=round(warmup * total),
                                                final_factor=float(sched.get("final_factor", 0.0))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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


def warmup_cosine_factor(total_steps: int, warmup_steps: int, final_factor: float = 0.0):
    """LR multiplier per optimizer step: linear from 1/(warmup+1) to 1 over `warmup_steps`, then a cosine
    from 1 down to `final_factor` at `total_steps`."""
    total_steps, warmup_steps = max(1, int(total_steps)), max(0, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
