"""Evaluation of label-distribution runs: metrics, predicted-vs-true bar charts, the worst predictions,
and a t-SNE map of the learned embeddings coloured by majority class."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from studykit.evaluation.plots import gallery  # noqa: E402
from studykit.metrics.distribution import DistributionMetrics, distribution_markdown  # noqa: E402
from studykit.utils.io import atomic_write_json, atomic_write_text  # noqa: E402


@torch.no_grad()
def predict_with_embeddings(module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    module.eval()
    probs, feats = [], []
    for batch in loader:
        f = module.net.features(batch["image"])
        probs.append(module.net.head(f).softmax(-1))
        feats.append(f)
    return torch.cat(probs), torch.cat(feats)


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
    fig.savefig(path, dpi=100)
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
    fig.savefig(path, dpi=100)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_distribution(run, out_dir: Path, visualize: bool = True, samples: Sequence[str] | None = None,
                          n_samples: int = 6, n_worst: int = 16, tsne_max: int = 2000) -> dict[str, Any]:
    """`run` is a runner.LoadedRun of a distribution run; writes report, files and (optionally) plots."""
    from studykit.evaluation.runner import per_sample_csv

    test = run.test_set
    classes = run.datamodule.classes
    probs, feats = predict_with_embeddings(run.module, run.datamodule._loader(test, shuffle=False))
    metric = DistributionMetrics(classes)
    metric.update(probs, test.distribution)
    report = {"primary_metric": {"name": "kl", "mode": "min"}, "run_dir": str(run.run_dir),
              "checkpoint": str(run.checkpoint), "classes": classes, **metric.report()}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "test_report.json", report)
    atomic_write_text(out_dir / "test_report.md", distribution_markdown(report, f"{run.cfg.get('run_name')}"))
    kl = metric.scores()["kl"].numpy()
    atomic_write_text(out_dir / "test_per_sample.csv", per_sample_csv(test.image_id, kl.tolist(), "kl"))
    if visualize:
        images = test.images.numpy()
        pred, target = probs.numpy(), test.distribution.numpy()
        ids = list(test.image_id)
        chosen = [ids.index(s) for s in samples] if samples else list(range(min(n_samples, len(ids))))
        distribution_bars(out_dir / "distributions.png", images[chosen], pred[chosen], target[chosen], [ids[i] for i in chosen], classes)
        worst_gallery(out_dir / "worst_predictions.png", images, kl, pred, target, ids, classes, n_worst)
        keep = np.random.default_rng(0).permutation(len(ids))[:tsne_max]
        tsne_map(out_dir / "tsne_embeddings.png", feats.numpy()[keep], target.argmax(1)[keep], classes)
    return report
