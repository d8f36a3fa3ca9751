"""Metrics between predicted and annotator vote distributions, as a torchmetrics Metric.

Per sample: squared error (mean over classes), total variation distance (half the L1 distance), KL(votes ||
prediction), cross-entropy of the prediction under the votes, and the earth mover's distance with the
ground distance |i - j| between class positions i, j in the configured class order (for 1-D distributions
on unit-spaced points this is the L1 distance between the two CDFs, the same as
scipy.stats.wasserstein_distance on the class indices). The class order is nominal, so EMD here measures
how far mass moves along that fixed order; it is reported for comparison with the literature, with
TVD and KL as the order-free measures. Majority-vote accuracy: argmax of the prediction equals the
argmax of the votes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

EPS = 1e-8


def per_sample_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    pred, target = pred.float(), target.float()
    log_pred = pred.clamp_min(EPS).log()
    return {
        "mse": ((pred - target) ** 2).mean(-1),
        "tvd": 0.5 * (pred - target).abs().sum(-1),
        "kl": (target * (target.clamp_min(EPS).log() - log_pred)).sum(-1),
        "emd": (pred.cumsum(-1) - target.cumsum(-1)).abs()[..., :-1].sum(-1),
        "cross_entropy": -(target * log_pred).sum(-1),
        "accuracy": (pred.argmax(-1) == target.argmax(-1)).float(),
    }


class DistributionMetrics(Metric):
    full_state_update = False

    def __init__(self, classes: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.classes = list(classes)
        self.add_state("pred", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """`pred`: predicted probabilities (B, C); `target`: vote distributions (B, C)."""
        if pred.shape != target.shape or pred.ndim != 2:
            raise ValueError(f"expected (B, C) predictions and targets, got {tuple(pred.shape)} and {tuple(target.shape)}")
        self.pred.append(pred.detach().float())
        self.target.append(target.detach().float())

    def scores(self) -> dict[str, torch.Tensor]:
        return per_sample_scores(dim_zero_cat(self.pred), dim_zero_cat(self.target))

    def compute(self) -> dict[str, torch.Tensor]:
        return {k: v.mean() for k, v in self.scores().items()}

    def report(self) -> dict:
        pred, target = dim_zero_cat(self.pred), dim_zero_cat(self.target)
        scores = self.scores()
        majority = target.argmax(-1)
        per_class = {}
        for c, name in enumerate(self.classes):
            sel = majority == c
            if sel.any():
                per_class[name] = {"n": int(sel.sum()), "accuracy": float(scores["accuracy"][sel].mean()),
                                   "kl": float(scores["kl"][sel].mean())}
        return {"n_samples": int(pred.shape[0]), **{k: float(v.mean()) for k, v in scores.items()}, "per_class": per_class}


def distribution_markdown(report: dict, title: str) -> str:
    lines = [f"# {title}", "", f"Samples: {report['n_samples']}", "", "| metric | value |", "|---|---|"]
    for key in ("kl", "tvd", "emd", "mse", "cross_entropy", "accuracy"):
        lines.append(f"| {key} | {report[key]:.4f} |")
    lines += ["", "| majority class | n | accuracy | KL |", "|---|---|---|---|"]
    for name, row in report["per_class"].items():
        lines.append(f"| {name} | {row['n']} | {row['accuracy']:.3f} | {row['kl']:.4f} |")
    return "\n".join(lines) + "\n"
