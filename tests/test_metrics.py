import numpy as np
import pytest
import torch

from studykit.metrics import LandmarkErrorMetrics
from studykit.metrics.landmark import report_markdown


def test_metrics_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 299, size=(23, 15, 2)).astype(np.float32)
    target = pred + rng.normal(0, 6, size=pred.shape).astype(np.float32)
    category = rng.integers(0, 3, size=23)
    metric = LandmarkErrorMetrics(["COVID", "Normal", "Viral_Pneumonia"])
    for s in range(0, 23, 8):  # uneven batches
        metric.update(torch.from_numpy(pred[s:s + 8]), torch.from_numpy(target[s:s + 8]), torch.from_numpy(category[s:s + 8]))
    report = metric.report()

    err = np.linalg.norm(pred - target, axis=-1)  # (N, K)
    per_image = err.mean(1)
    assert report["n_images"] == 23
    assert report["mean_px"] == pytest.approx(err.mean(), rel=1e-5)
    assert report["median_px"] == pytest.approx(np.sort(per_image)[(23 - 1) // 2], rel=1e-5)  # torch: lower median
    assert report["std_px"] == pytest.approx(per_image.std(), rel=1e-4)
    assert report["min_px"] == pytest.approx(per_image.min(), rel=1e-5)
    assert report["max_px"] == pytest.approx(per_image.max(), rel=1e-5)
    for k in range(15):
        assert report["per_landmark"][f"L{k + 1}"]["mean_px"] == pytest.approx(err[:, k].mean(), rel=1e-5)
    for idx, name in enumerate(["COVID", "Normal", "Viral_Pneumonia"]):
        assert report["per_category"][name]["mean_px"] == pytest.approx(per_image[category == idx].mean(), rel=1e-5)
        assert report["per_category"][name]["n"] == int((category == idx).sum())
    bins = report["quality_bins"]
    assert bins["<5"]["count"] == int((per_image < 5).sum())
    assert bins["5-8.5"]["count"] == int(((per_image >= 5) & (per_image < 8.5)).sum())
    assert bins["8.5-15"]["count"] == int(((per_image >= 8.5) & (per_image < 15)).sum())
    assert bins[">=15"]["count"] == int((per_image >= 15).sum())
    assert sum(b["count"] for b in bins.values()) == 23
    md = report_markdown(report)
    assert "| COVID |" in md and "| L15 |" in md


def test_metrics_reset_and_shape_check():
    metric = LandmarkErrorMetrics()
    metric.update(torch.zeros(2, 15, 2), torch.full((2, 15, 2), 3.0))
    assert metric.compute()["mean_px"].item() == pytest.approx(np.hypot(3, 3))
    metric.reset()
    metric.update(torch.zeros(1, 15, 2), torch.zeros(1, 15, 2))
    assert metric.compute()["max_px"].item() == 0.0
    with pytest.raises(ValueError, match="expected"):
        metric.update(torch.zeros(2, 30), torch.zeros(2, 30))
