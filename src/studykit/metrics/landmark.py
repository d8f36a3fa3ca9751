"""Pixel error metrics for landmark regression, as a torchmetrics Metric.

Errors are Euclidean distances in pixels of the original image. Summary statistics (mean, median, std,
min, max) are taken over the per-image mean errors; the mean equals the mean over all points because
every image has the same number of landmarks. Quality bins classify images by their mean error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# (label, lower bound inclusive, upper bound exclusive) in pixels
QUALITY_BINS: tuple[tuple[str, float, float], ...] = (
    ("<5", 0.0, 5.0),
    ("5-8.5", 5.0, 8.5),
    ("8.5-15", 8.5, 15.0),
    (">=15", 15.0, float("inf")),
)


class LandmarkErrorMetrics(Metric):
    full_state_update = False
    higher_is_better = False

    def __init__(self, categories: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.categories = list(categories)
        self.add_state("errors", default=[], dist_reduce_fx="cat")  # (N, K) pixels
        self.add_state("category", default=[], dist_reduce_fx="cat")  # (N,)

    def update(self, pred_px: torch.Tensor, target_px: torch.Tensor, category: torch.Tensor | None = None) -> None:
        if pred_px.shape != target_px.shape or pred_px.ndim != 3 or pred_px.shape[-1] != 2:
            raise ValueError(f"expected (B, K, 2) predictions and targets, got {tuple(pred_px.shape)} and {tuple(target_px.shape)}")
        self.errors.append(torch.linalg.vector_norm(pred_px.float() - target_px.float(), dim=-1))
        if category is None:
            category = torch.full((pred_px.shape[0],), -1, dtype=torch.long, device=pred_px.device)
        self.category.append(category.long())

    def per_image_errors(self) -> torch.Tensor:
        return dim_zero_cat(self.errors)

    def compute(self) -> dict[str, torch.Tensor]:
        """Scalar summary, cheap enough for every validation epoch."""
        per_image = dim_zero_cat(self.errors).mean(dim=1)
        return {
            "mean_px": per_image.mean(),
            "median_px": per_image.median(),
            "std_px": per_image.std(unbiased=False) if per_image.numel() > 1 else per_image.new_zeros(()),
            "min_px": per_image.min(),
            "max_px": per_image.max(),
        }

    def report(self, names: Sequence[str] | None = None) -> dict:
        """Full breakdown as plain Python numbers: summary, per landmark (named by `names`, else L1..LK), per
        category, quality bins."""
        errors = dim_zero_cat(self.errors)
        category = dim_zero_cat(self.category)
        per_image = errors.mean(dim=1)
        summary = {k: float(v) for k, v in self.compute().items()}
        names = list(names) if names else [f"L{k + 1}" for k in range(errors.shape[1])]
        per_landmark = {
            names[k]: {"mean_px": float(errors[:, k].mean()), "median_px": float(errors[:, k].median())}
            for k in range(errors.shape[1])
        }
        per_category = {}
        for idx, name in enumerate(self.categories):
            sel = per_image[category == idx]
            if sel.numel():
                per_category[name] = {"n": int(sel.numel()), "mean_px": float(sel.mean()), "median_px": float(sel.median())}
        bins = {}
        for label, low, high in QUALITY_BINS:
            count = int(((per_image >= low) & (per_image < high)).sum())
            bins[label] = {"count": count, "fraction": count / max(1, per_image.numel())}
        return {
            "n_images": int(per_image.numel()),
            **summary,
            "per_landmark": per_landmark,
            "per_category": per_category,
            "quality_bins": bins,
        }


def normalized_errors(pred_px: torch.Tensor, target_px: torch.Tensor, pair: Sequence[int]) -> torch.Tensor:
    """Per-image NME: the mean point error divided by the true distance of the 1-based points `pair` (for faces
    the outer eye corners, 300-W's inter-ocular normalisation)."""
    a, b = int(pair[0]) - 1, int(pair[1]) - 1
    scale = torch.linalg.vector_norm(target_px[:, a] - target_px[:, b], dim=-1)
    if (scale <= 0).any():
        raise ValueError(f"points {pair[0]} and {pair[1]} coincide in {int((scale <= 0).sum())} images: no NME scale")
    return torch.linalg.vector_norm(pred_px.float() - target_px.float(), dim=-1).mean(-1) / scale


def nme_report(nme: torch.Tensor, pair: Sequence[str], failure_threshold: float) -> dict:
    """Mean, median, failures (NME above the threshold) and the area under the cumulative error curve up to the
    threshold (AUC, 300-W's figure; 1 is perfect)."""
    grid = torch.linspace(0, failure_threshold, 801)
    ced = (nme[None, :] <= grid[:, None]).float().mean(1)
    auc = float(torch.trapezoid(ced, grid) / failure_threshold)
    failures = int((nme > failure_threshold).sum())
    return {"normalized_by": list(pair), "mean": float(nme.mean()), "median": float(nme.median()),
            "failure_threshold": failure_threshold, "failures": failures, "failure_rate": failures / max(1, nme.numel()),
            "auc": auc}


def report_markdown(report: dict, title: str = "Test report") -> str:
    lines = [f"# {title}", "", f"Images: {report['n_images']}", "", "| statistic | pixels |", "|---|---|"]
    for key in ("mean_px", "median_px", "std_px", "min_px", "max_px"):
        lines.append(f"| {key.removesuffix('_px')} | {report[key]:.2f} |")
    if "nme" in report:
        nme = report["nme"]
        lines += ["", f"NME (mean point error / distance {nme['normalized_by'][0]} - {nme['normalized_by'][1]}): mean "
                  f"{nme['mean']:.4f}, median {nme['median']:.4f}; failures (NME > {nme['failure_threshold']}): {nme['failures']} "
                  f"({nme['failure_rate']:.1%}); AUC@{nme['failure_threshold']} {nme['auc']:.3f}"]
    lines += ["", "| category | n | mean px | median px |", "|---|---|---|---|"]
    for name, row in report["per_category"].items():
        lines.append(f"| {name} | {row['n']} | {row['mean_px']:.2f} | {row['median_px']:.2f} |")
    lines += ["", "| landmark | mean px | median px |", "|---|---|---|"]
    for name, row in report["per_landmark"].items():
        lines.append(f"| {name} | {row['mean_px']:.2f} | {row['median_px']:.2f} |")
    lines += ["", "| quality bin (per-image mean error) | images | fraction |", "|---|---|---|"]
    for label, row in report["quality_bins"].items():
        lines.append(f"| {label} px | {row['count']} | {row['fraction']:.1%} |")
    return "\n".join(lines) + "\n"
