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
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from studykit.builders import normalization  # noqa: E402
from studykit.evaluation.files import per_sample_csv, probability_predictions_csv  # noqa: E402
from studykit.inference.inputs import OK, PredictRequest  # noqa: E402
from studykit.metrics.classification import classification_markdown, classification_report  # noqa: E402
from studykit.tasks.base import Task, TestRun, register_task  # noqa: E402
from studykit.utils.io import atomic_save_figure, atomic_write_text, csv_text  # noqa: E402


@torch.no_grad()
def predict_probs(nets, loader, tta: bool) -> torch.Tensor:
    """Softmax probabilities of every batch, the mean over `nets` (one network, or an ensemble's members, torch
    or ONNX); with `tta`, each averaged with the mirrored image's (expressions and vote distributions do not
    change under a horizontal flip). The flip TTA of every softmax task, written once."""
    nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
    for net in nets:
        net.eval()
    out = []
    for batch in loader:
        views = []
        for net in nets:
            views.append(net(batch["image"]).float().softmax(-1))
            if tta:
                views.append(net(torch.flip(batch["image"], dims=[3])).float().softmax(-1))
        out.append(torch.stack(views).mean(0).cpu())
    return torch.cat(out) if out else torch.zeros(0)


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
    output_description = "(N, C) logits over `classes`; softmax for probabilities"

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

    # ---- new images -----------------------------------------------------------------------------------
    def predict_new(self, request: PredictRequest) -> dict[str, Any]:
        """The run's face pipeline (its stages and options, cached under request.cache_dir: a rerun on the same
        input only loads) over the input; a row per face with its box and class probabilities, photos without
        a face and unreadable files as rows with a status and a reason."""
        from studykit.data.expression_datamodule import FaceDataset, face_id
        from studykit.preprocessing.run import Source, preprocess_faces

        data = OmegaConf.to_container(request.run_cfg.data, resolve=True)
        classes = list(request.run_cfg.task.module.classes)
        # exactly the listed files: a file is that file, never a pattern (`face[1].jpg`)
        source = Source(list(request.files), [""] * len(request.files), [""] * len(request.files), [""] * len(request.files))
        state, _ = preprocess_faces(request.input_root, request.cache_dir, {**data["prepare"], "limit": None}, source)
        kept = state["kept"].tolist()
        images = state["four_channel"] if "four_channel" in state else state["face_images"]
        probs = torch.zeros(0, len(classes))
        if kept:
            dataset = FaceDataset(images, torch.zeros(len(kept), dtype=torch.long), [face_id(state, i) for i in kept],
                                  int(data["input_size"]), False, {}, *normalization(request.run_cfg))
            loader = DataLoader(dataset, batch_size=int(request.options.batch_size), shuffle=False)
            probs = predict_probs(request.nets, loader, bool(request.options.tta))
        position = {row: j for j, row in enumerate(kept)}
        header = ["file", "face_index", "status", "reason", "box_x1", "box_y1", "box_x2", "box_y2", "predicted",
                  *[f"p_{c}" for c in classes]]
        lines = []
        for i, path in enumerate(state["paths"]):
            face = int(state["face_index"][i]) if "face_index" in state else 0
            box = [f"{v:.1f}" for v in state["boxes"][i].tolist()] if i in position else [""] * 4
            if i in position:
                p = probs[position[i]]
                lines.append([path, face, OK, "", *box, classes[int(p.argmax())], *[f"{v:.6f}" for v in p.tolist()]])
            else:
                status = state["status"][i] if state["status"][i] != OK else "not_kept"
                lines.append([path, face, status, state["reason"][i], *box, "", *[""] * len(classes)])
        atomic_write_text(request.out / "predictions.csv", csv_text(header, lines))
        return {"task": self.name, "images": len(set(state["paths"])), "faces": len(kept), "predictions": probs, "rows": len(lines)}

    def export_constants(self, cfg: DictConfig) -> dict[str, Any]:
        return {"classes": list(cfg.task.module.classes), "face_pipeline": OmegaConf.to_container(cfg.data.prepare.pipeline, resolve=True)}
