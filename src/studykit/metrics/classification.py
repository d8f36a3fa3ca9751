"""The multiclass metric suite as one torchmetrics collection, plus log-loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
)


class LogLoss(Metric):
    """Mean negative log-likelihood of the true class under the predicted probabilities (sklearn's log_loss)."""

    full_state_update = False

    def __init__(self, eps: float = 1e-15, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        p = probs.double().clamp(self.eps, 1 - self.eps)
        p = p / p.sum(-1, keepdim=True)
        self.total += -p.gather(1, target.long()[:, None]).log().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


def classification_metrics(num_classes: int, **kwargs) -> MetricCollection:
    """Scalars for logging; the confusion matrix and per-class scores come from `classification_report`."""
    n = num_classes
    return MetricCollection({
        "accuracy": MulticlassAccuracy(n, average="micro", **kwargs),
        "balanced_accuracy": MulticlassRecall(n, average="macro", **kwargs),
        "precision_macro": MulticlassPrecision(n, average="macro", **kwargs),
        "recall_macro": MulticlassRecall(n, average="macro", **kwargs),
        "f1_macro": MulticlassF1Score(n, average="macro", **kwargs),
        "precision_micro": MulticlassPrecision(n, average="micro", **kwargs),
        "recall_micro": MulticlassRecall(n, average="micro", **kwargs),
        "f1_micro": MulticlassF1Score(n, average="micro", **kwargs),
        "cohen_kappa": MulticlassCohenKappa(n, **kwargs),
        "matthews_corrcoef": MulticlassMatthewsCorrCoef(n, **kwargs),
        "roc_auc_ovr": MulticlassAUROC(n, average="macro", **kwargs),
        "log_loss": LogLoss(**kwargs),
    })


def classification_report(probs: torch.Tensor, target: torch.Tensor, classes: Sequence[str]) -> dict:
    """Every scalar of the suite, the confusion matrix (rows: true, columns: predicted) and per-class scores, on
    the whole predictions given (never synchronised across processes: a report is made by one process)."""
    n = len(classes)
    suite = classification_metrics(n, sync_on_compute=False)
    suite.update(probs, target)
    report = {k: float(v) for k, v in suite.compute().items()}
    confusion = MulticlassConfusionMatrix(n)(probs, target)
    per_class_p = MulticlassPrecision(n, average=None)(probs, target)
    per_class_r = MulticlassRecall(n, average=None)(probs, target)
    per_class_f = MulticlassF1Score(n, average=None)(probs, target)
    support = torch.bincount(target.long(), minlength=n)
    report["confusion_matrix"] = confusion.tolist()
    report["per_class"] = {c: {"precision": float(per_class_p[i]), "recall": float(per_class_r[i]), "f1": float(per_class_f[i]),
                               "support": int(support[i])} for i, c in enumerate(classes)}
    report["n_samples"] = int(target.numel())
    return report


def classification_markdown(report: dict, title: str) -> str:
    keys = ["accuracy", "balanced_accuracy", "f1_macro", "f1_micro", "precision_macro", "recall_macro", "cohen_kappa",
            "matthews_corrcoef", "roc_auc_ovr", "log_loss"]
    lines = [f"# {title}", "", f"Samples: {report['n_samples']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {report[k]:.4f} |" for k in keys]
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |" for c, r in report["per_class"].items()]
    names = list(report["per_class"])
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", "", "| | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    lines += [f"| {names[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(report["confusion_matrix"])]
    return "\n".join(lines) + "\n"
