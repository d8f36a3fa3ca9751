"""Label-distribution learning: DistributionModule, predicted vote distributions (flip TTA: the mean over
the face and its mirror), KL / TVD / EMD report, predicted-vs-true bar charts, the worst predictions and a
t-SNE map of the learned embeddings coloured by majority class."""

from __future__ import annotations

from collections.abc import Sequence
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
from studykit.evaluation.files import distribution_predictions_csv, per_sample_csv  # noqa: E402
from studykit.evaluation.plots import gallery  # noqa: E402
from studykit.inference.inputs import OK, PredictRequest, read_grey_inputs  # noqa: E402
from studykit.metrics.distribution import DistributionMetrics, distribution_markdown  # noqa: E402
from studykit.tasks.base import Task, TestRun, register_task  # noqa: E402
from studykit.tasks.classification import predict_probs  # noqa: E402
from studykit.utils.io import atomic_save_figure, atomic_write_text, csv_text  # noqa: E402


@torch.no_grad()
def embeddings(module, loader) -> torch.Tensor:
    module.eval()
    return torch.cat([module.embed(batch["image"]).float().cpu() for batch in loader])


def distribution_bars(path: Path, images: np.ndarray, pred: np.ndarray, target: np.ndarray, ids: Sequence[str],
                      classes: Sequence[str]) -> Path:
    n = len(ids)
    fig, axes = plt.subplots(n, 2, figsize=(9, 2.2 * n), gridspec_kw={"width_ratios": [1, 4]}, squeeze=False)
    x = np.arange(len(classes))
    for row, i in enumerate(range(n)):
        axes[row, 0].imshow(images[i], cmap="gray")
        axes[row, 0].axis("off")
        axes[row, 0].set_title(ids[i], fontsize=7)
        axes[row, 1].bar(x - 0.2, target[i], 0.4, label="votes", color="tab:green")
        axes[row, 1].bar(x + 0.2, pred[i], 0.4, label="predicted", color="tab:red")
        axes[row, 1].set_xticks(x, classes, fontsize=7)
        axes[row, 1].set_ylim(0, 1)
    axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def worst_gallery(path: Path, images: np.ndarray, kl: np.ndarray, pred: np.ndarray, target: np.ndarray,
                  ids: Sequence[str], classes: Sequence[str], n: int = 16) -> Path:
    worst = np.argsort(kl)[::-1][:n]
    fig, axes = gallery(len(worst), cols=4, cell=(2.6, 2.9))
    for ax, i in zip(axes, worst):
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"{ids[i]}\nKL {kl[i]:.2f}: votes {classes[target[i].argmax()]}, "
                     f"pred {classes[pred[i].argmax()]}", fontsize=7)
    fig.suptitle(f"{len(worst)} worst predictions by KL(votes || prediction)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def tsne_map(path: Path, embeddings: np.ndarray, majority: np.ndarray, classes: Sequence[str], seed: int = 0) -> Path:
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(embeddings) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    fig, ax = plt.subplots(figsize=(7, 6))
    for c, name in enumerate(classes):
        sel = majority == c
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, label=f"{name} ({int(sel.sum())})")
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title("t-SNE of the learned embeddings, coloured by majority vote")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


@register_task
class DistributionTask(Task):
    name = "distribution"
    module_class = "studykit.models.distribution_module.DistributionModule"
    datamodule_classes = ("studykit.data.distribution_datamodule.DistributionDataModule",)
    primary_metric = {"name": "kl", "mode": "min"}
    per_sample_name = "kl"
    output_description = "(N, C) logits over `classes`; softmax for the predicted distribution"

    def predict(self, run: TestRun, tta: bool) -> torch.Tensor:
        return predict_probs(run.module, run.test_loader(), tta)

    def _metric(self, pred: torch.Tensor, run: TestRun) -> DistributionMetrics:
        metric = DistributionMetrics(run.datamodule.classes, sync_on_compute=False)
        metric.update(pred, run.test_set.distribution)
        return metric

    def metrics(self, pred: torch.Tensor, run: TestRun) -> dict[str, Any]:
        return {"classes": run.datamodule.classes, **self._metric(pred, run).report()}

    def per_sample(self, pred: torch.Tensor, run: TestRun) -> list[float]:
        return self._metric(pred, run).scores()["kl"].tolist()

    def prediction_files(self, pred: torch.Tensor, run: TestRun) -> dict[str, str]:
        test, n = run.test_set, len(pred)
        ids, target = list(test.image_id)[:n], test.distribution[:n]
        return {"test_predictions.csv": distribution_predictions_csv(pred, target, ids, run.datamodule.classes),
                "test_per_sample.csv": per_sample_csv(ids, self.per_sample(pred, run), self.per_sample_name)}

    def write(self, out_dir: Path, pred: torch.Tensor, run: TestRun, report: dict[str, Any], title: str,
              visualize: bool, options: dict[str, Any], n_samples: int = 6, n_worst: int = 16, tsne_max: int = 2000) -> None:
        test, classes = run.test_set, run.datamodule.classes
        ids = list(test.image_id)
        kl = self.per_sample(pred, run)
        atomic_write_text(out_dir / "test_report.md", distribution_markdown(report, title))
        for name, text in self.prediction_files(pred, run).items():
            atomic_write_text(out_dir / name, text)
        if visualize:
            images, probs, target = test.images.numpy(), pred.numpy(), test.distribution.numpy()
            samples = options.get("samples")
            missing = [s for s in samples or [] if s not in ids]
            if missing:
                raise ValueError(f"samples={missing} are not test image ids of {run.run_dir}")
            chosen = [ids.index(s) for s in samples] if samples else list(range(min(n_samples, len(ids))))
            distribution_bars(out_dir / "distributions.png", images[chosen], probs[chosen], target[chosen], [ids[i] for i in chosen], classes)
            worst_gallery(out_dir / "worst_predictions.png", images, np.asarray(kl), probs, target, ids, classes, n_worst)
            keep = np.random.default_rng(0).permutation(len(ids))[:tsne_max]
            feats = embeddings(run.module, run.test_loader()).numpy()
            tsne_map(out_dir / "tsne_embeddings.png", feats[keep], target.argmax(1)[keep], classes)

    def summary_line(self, report: dict[str, Any]) -> str:
        return (f"{report.get('split', 'test')} KL {report['kl']:.4f}, TVD {report['tvd']:.4f}, EMD {report['emd']:.4f}, "
                f"accuracy "
                f"{report['accuracy']:.3f} on {report['n_samples']} samples")

    # ---- new images -----------------------------------------------------------------------------------
    def predict_new(self, request: PredictRequest) -> dict[str, Any]:
        """Each image grey and resized as the run's cache was; the predicted distribution and its majority class."""
        from studykit.data.distribution_datamodule import DistributionDataset

        data = OmegaConf.to_container(request.run_cfg.data, resolve=True)
        classes = list(request.run_cfg.task.module.classes)
        rows, tensors = read_grey_inputs(request.files, {"image_size": data["prepare"]["image_size"]})
        n = tensors["images"].shape[0]
        probs = torch.zeros(0, len(classes))
        if n:
            tensors["distribution"] = torch.zeros(n, len(classes))
            dataset = DistributionDataset(tensors, int(data["input_size"]), False, {}, *normalization(request.run_cfg))
            loader = DataLoader(dataset, batch_size=int(request.options.batch_size), shuffle=False)
            probs = predict_probs(request.nets, loader, bool(request.options.tta))
        header = ["file", "width", "height", "status", "reason", "majority", *[f"p_{c}" for c in classes]]
        lines, j = [], 0
        for row in rows:
            if row["status"] == OK:
                p = probs[j]
                j += 1
                lines.append([row["file"], row["width"], row["height"], OK, "", classes[int(p.argmax())], *[f"{v:.6f}" for v in p.tolist()]])
            else:
                lines.append([row["file"], "", "", row["status"], row["reason"], "", *[""] * len(classes)])
        atomic_write_text(request.out / "predictions.csv", csv_text(header, lines))
        return {"task": self.name, "images": len(rows), "predicted": n, "predictions": probs}

    def export_constants(self, cfg: DictConfig) -> dict[str, Any]:
        return {"classes": list(cfg.task.module.classes), "grey_image_size": int(cfg.data.prepare.image_size)}
