"""What every task's LightningModule shares: phase handling (freezing, optimizer groups, scheduler) and the
memory layout of the network and its input batches."""

from __future__ import annotations

import inspect
import math
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn


class PhasedModule(L.LightningModule):
    """A LightningModule with `self.net.backbone` and a head, trained in phases (`set_stage`).

    A phase dict: freeze_backbone, epochs, optimizer and scheduler as partial configs (see
    `configure_optimizers`). Subclasses define the training and validation steps.
    """

    net: nn.Module

    def __init__(self, stage: dict[str, Any] | None = None):
        super().__init__()
        self.stage_cfg: dict[str, Any] = dict(stage or {"freeze_backbone": False, "optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-3}})
        self.channels_last = False

    # ---- memory layout --------------------------------------------------------------------------------
    def use_channels_last(self, enabled: bool = True) -> None:
        """Keep the weights and every input batch in channels_last (NHWC). On CPU, oneDNN's convolutions -
        depthwise ones above all - run far faster in that layout; values are unchanged."""
        self.channels_last = bool(enabled)
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def in_layout(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the module's memory layout: done in forward, so training, validation and every
        evaluation path (which call the module without Lightning) compute with the same kernels."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

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
        """The stage's optimizer and scheduler are partial configs (`_target_`, `_partial_: true`). Taken out
        before they are built: optimizer.backbone_lr (the backbone group's rate; null: lr) and
        scheduler.interval (epoch or step). Filled at run time when the scheduler takes them and the config
        leaves them out: total_steps (this stage's optimizer steps), T_max (its epochs), max_lr (each group's lr)."""
        opt_cfg = dict(self.stage_cfg.get("optimizer") or {})
        if "_target_" not in opt_cfg:
            raise ValueError(f"phase stage optimizer needs a _target_ (a partial config such as torch.optim.AdamW), got {opt_cfg}")
        backbone_lr = opt_cfg.pop("backbone_lr", None)
        groups = [{"params": self.head_parameters(), "name": "head"}]
        if not self.backbone_frozen:
            backbone = {"params": list(self.net.backbone.parameters()), "name": "backbone"}
            groups.append(backbone | ({"lr": float(backbone_lr)} if backbone_lr is not None else {}))
        optimizer = instantiate({**opt_cfg, "_partial_": True})(groups)
        sched_cfg = dict(self.stage_cfg.get("scheduler") or {})
        if not sched_cfg:
            return optimizer
        interval = sched_cfg.pop("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler.interval must be epoch or step, got {interval!r}")
        build = instantiate({**sched_cfg, "_partial_": True})
        runtime = {"total_steps": lambda: int(self.trainer.estimated_stepping_batches),
                   "T_max": lambda: int(self.stage_cfg.get("epochs") or 1),
                   "max_lr": lambda: [g["lr"] for g in optimizer.param_groups]}
        accepted = inspect.signature(build.func).parameters
        extra = {k: fill() for k, fill in runtime.items() if k in accepted and k not in build.keywords}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": build(optimizer, **extra), "interval": interval}}

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step}, batch {batch_idx}; "
                "stopping (the last good checkpoint is kept)"
            )


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1,
                  final_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first `warmup` fraction of the steps, then a cosine to `final_factor` x lr
    (per optimizer step: short phases of small data sets have few epochs, so warm-up is counted in steps)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine_factor(total_steps, warmup_steps=round(warmup * total_steps), final_factor=final_factor))


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
