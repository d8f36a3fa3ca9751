"""Expression classification: ClassificationModule, softmax probabilities (flip TTA: the mean over the face
and its mirror), the full multiclass report, confusion-matrix and per-class PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from studykit.evaluation.files import per_sample_csv, probability_predictions_csv  # noqa: E402
from studykit.metrics.classification import classification_markdown, classification_report  # noqa: E402
from studykit.tasks.base import Task, TestRun, register_task  # noqa: E402
from studykit.utils.io import atomic_save_figure, atomic_write_text  # noqa: E402


@torch.no_grad()
def predict_probs(module, loader, tta: bool) -> torch.Tensor:
    """Softmax probabilities of every batch; with `tta`, averaged with those of the mirrored images
    (expressions and vote distributions do not change under a horizontal flip)."""
    module.eval()
    out = []
    for batch in loader:
        probs = module(batch["image"]).softmax(-1)
        if tta:
            probs = 0.5 * (probs + module(torch.flip(batch["image"], dims=[3])).softmax(-1))
        out.append(probs.float().cpu())
    return torch.cat(out)


def confusion_png(path: Path, matrix: np.ndarray, classes: list[str]) -> Path:
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def per_class_png(path: Path, per_class: dict[str, dict[str, float]]) -> Path:
    names = list(per_class)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(names), 4))
    for k, (metric, color) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))):
        ax.bar(x + (k - 1) * 0.27, [per_class[n][metric] for n in names], 0.27, label=metric, color=color)
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1), title="Per-class precision, recall and F1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


@register_task
class ClassificationTask(Task):
    name = "classification"
    module_class = "studykit.models.classification_module.ClassificationModule"
    datamodule_classes = ("studykit.data.expression_datamodule.ExpressionDataModule",)
    primary_metric = {"name": "accuracy", "mode": "max"}
    per_sample_name = "correct"

    def predict(self, run: TestRun, tta: bool) -> torch.Tensor:
        return predict_probs(run.module, run.test_loader(), tta)

    def metrics(self, pred: torch.Tensor, run: TestRun) -> dict[str, Any]:
        return {"classes": run.module.classes, **classification_report(pred, run.test_set.labels, run.module.classes)}

    def per_sample(self, pred: torch.Tensor, run: TestRun) -> list[float]:
        return (pred.argmax(-1) == run.test_set.labels).float().tolist()

    def prediction_files(self, pred: torch.Tensor, run: TestRun) -> dict[str, str]:
        n = len(pred)
        ids, labels = run.test_set.image_id[:n], run.test_set.labels[:n]
        correct = (pred.argmax(-1) == labels).float().tolist()
        return {"test_predictions.csv": probability_predictions_csv(pred, ids, run.module.classes, labels),
                "test_per_sample.csv": per_sample_csv(ids, correct, self.per_sample_name)}

    def write(self, out_dir: Path, pred: torch.Tensor, run: TestRun, report: dict[str, Any], title: str,
              visualize: bool, options: dict[str, Any]) -> None:
        classes = run.module.classes
        atomic_write_text(out_dir / "test_report.md", classification_markdown(report, title))
        for name, text in self.prediction_files(pred, run).items():
            atomic_write_text(out_dir / name, text)
        confusion_png(out_dir / "confusion_matrix.png", np.asarray(report["confusion_matrix"]), classes)
        per_class_png(out_dir / "per_class.png", report["per_class"])

    def summary_line(self, report: dict[str, Any]) -> str:
        return (f"{report.get('split', 'test')} accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f}, "
                f"balanced accuracy "
                f"{report['balanced_accuracy']:.4f} on {report['n_samples']} samples")
