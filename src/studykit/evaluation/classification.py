"""Evaluation of classification runs: metrics JSON, markdown report, confusion-matrix and per-class PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from studykit.metrics.classification import classification_markdown, classification_report  # noqa: E402
from studykit.utils.io import atomic_write_json, atomic_write_text  # noqa: E402


def confusion_png(path: Path, matrix: np.ndarray, classes: list[str]) -> Path:
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def evaluate_classification(run, out_dir: Path) -> dict[str, Any]:
    """`run` is a runner.LoadedRun of a classification run."""
    from studykit.evaluation.runner import per_sample_csv

    module = run.module.eval()
    probs, targets = [], []
    for batch in run.datamodule._loader(run.test_set, shuffle=False):
        probs.append(module(batch["image"]).softmax(-1))
        targets.append(batch["target"])
    probs, target = torch.cat(probs), torch.cat(targets)
    classes = run.module.classes
    report = {"primary_metric": {"name": "accuracy", "mode": "max"}, "run_dir": str(run.run_dir),
              "checkpoint": str(run.checkpoint), "classes": classes, **classification_report(probs, target, classes)}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "test_report.json", report)
    atomic_write_text(out_dir / "test_report.md", classification_markdown(report, f"{run.cfg.get('run_name')}"))
    correct = (probs.argmax(-1) == target).float().tolist()
    atomic_write_text(out_dir / "test_per_sample.csv", per_sample_csv(run.test_set.image_id, correct, "correct"))
    confusion_png(out_dir / "confusion_matrix.png", np.asarray(report["confusion_matrix"]), classes)
    per_class_png(out_dir / "per_class.png", report["per_class"])
    return report
