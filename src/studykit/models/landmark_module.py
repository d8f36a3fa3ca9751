"""One LightningModule for landmark regression; backbone, head, loss and phase come from config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers.coord_attn import CoordAttn
from torch import nn

from studykit.losses.landmark import js_divergence_maps
from studykit.metrics.landmark import LandmarkErrorMetrics
from studykit.models.backbones import create_backbone
from studykit.models.base import PhasedModule
from studykit.models.heads import HeatmapHead, MLPHead

HEAD_TYPES = ("mlp", "heatmap")


class LandmarkRegressor(nn.Module):
    """Backbone -> landmark head -> (B, K, 2) coordinates in [0, 1].

    head.type=mlp: (optional Coordinate Attention on the last feature map) -> global pool -> MLP.
    head.type=heatmap: several feature levels -> FPN decoder -> per-landmark heat maps -> soft-argmax
    (Coordinate Attention, if on, recalibrates the deepest level).
    """

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], num_landmarks: int, coord_attention: bool = False):
        super().__init__()
        head = dict(head)
        self.head_type = head.pop("type", "mlp")
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"model.head.type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        self.num_landmarks = num_landmarks
        self.heatmap_loss = None
        if self.head_type == "heatmap":
            self.heatmap_loss = {"weight": float(head.pop("heatmap_loss_weight", 0.0)), "sigma": float(head.pop("sigma", 1.0))}
            out_indices = tuple(head.pop("out_indices", (2, 3, 4)))
            self.backbone = create_backbone(**backbone, features_only=True, out_indices=out_indices)
            channels = self.backbone.feature_info.channels()
            self.attention = CoordAttn(channels[-1]) if coord_attention else None
            self.head = HeatmapHead(channels, num_landmarks, **head)
        else:
            self.backbone = create_backbone(**backbone, global_pool="" if coord_attention else "avg")
            features = self.backbone.num_features
            self.attention = CoordAttn(features) if coord_attention else None
            self.pool = nn.AdaptiveAvgPool2d(1) if coord_attention else None
            self.head = MLPHead(features, 2 * num_landmarks, **head)

    def features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feats = self.backbone(x)
        if self.head_type == "heatmap":
            if self.attention is not None:
                feats = [*feats[:-1], self.attention(feats[-1])]
            return feats
        if self.attention is not None:
            feats = self.pool(self.attention(feats)).flatten(1)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).view(-1, self.num_landmarks, 2)

    def auxiliary_loss(self, target_norm: torch.Tensor) -> torch.Tensor | None:
        """The heat-map loss of the last forward pass, if the head has one."""
        if not self.heatmap_loss or self.heatmap_loss["weight"] <= 0 or self.head.last_probs is None:
            return None
        return self.heatmap_loss["weight"] * js_divergence_maps(self.head.last_probs, target_norm, self.heatmap_loss["sigma"])



class LandmarkModule(PhasedModule):
    """Predictions are normalized to [0, 1] of the input; losses and metrics use pixels of the original. Trains
    and logs; testing and reports belong to the landmark Task (studykit.tasks.landmarks)."""

    def __init__(
        self,
        backbone: dict[str, Any],
        head: dict[str, Any],
        loss: nn.Module,
        num_landmarks: int = 15,
        coord_attention: bool = False,
        categories: Sequence[str] = ("COVID", "Normal", "Viral_Pneumonia"),
        stage: dict[str, Any] | None = None,
    ):
        super().__init__(stage)
        self.save_hyperparameters(ignore=["loss"])
        self.net = LandmarkRegressor(backbone, head, num_landmarks, coord_attention)
        self.loss_fn = loss
        self.categories = list(categories)
        self.val_metrics = LandmarkErrorMetrics(self.categories)

    # ---- steps --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.in_layout(x))

    @staticmethod
    def to_pixels(points: torch.Tensor, orig_size: torch.Tensor) -> torch.Tensor:
        return points * orig_size[:, None, :]

    def _shared_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self(batch["image"])
        pred_px = self.to_pixels(pred, batch["orig_size"])
        target_px = self.to_pixels(batch["target"], batch["orig_size"])
        loss = self.loss_fn(pred_px, target_px)
        aux = self.net.auxiliary_loss(batch["target"])
        if aux is not None:
            self.log(f"{'train' if self.training else 'val'}/loss_heatmap", aux, on_step=False, on_epoch=True,
                     batch_size=pred.shape[0])
            loss = loss + aux
        return loss, pred_px, target_px

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._shared_step(batch)
        self.check_finite(loss, batch_idx)
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        for name, value in getattr(self.loss_fn, "last_components", {}).items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, pred_px, target_px = self._shared_step(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        self.val_metrics.update(pred_px, target_px, batch["category"])

    def on_validation_epoch_end(self) -> None:
        for key, value in self.val_metrics.compute().items():
            self.log(f"val/{key}", value, prog_bar=key == "mean_px")
        self.val_metrics.reset()
