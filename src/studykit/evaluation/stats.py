"""Statistics over runs: mean +- std over seeds, and paired tests per image between two configurations."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats


def mean_std(values: Iterable[float]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def paired_test(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("a", "b")) -> dict:
    """Paired comparison of per-image errors: t-test and Wilcoxon signed-rank (two-sided)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired test needs two equal-length vectors, got {a.shape} and {b.shape}")
    diff = a - b
    t = stats.ttest_rel(a, b)
    nonzero = diff[diff != 0]
    w = stats.wilcoxon(a, b) if nonzero.size else None
    return {
        "a": names[0],
        "b": names[1],
        "n": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_difference": float(diff.mean()),
        "t_statistic": float(t.statistic) if np.isfinite(t.statistic) else None,
        "t_pvalue": float(t.pvalue) if np.isfinite(t.pvalue) else None,
        "wilcoxon_statistic": float(w.statistic) if w is not None else None,
        "wilcoxon_pvalue": float(w.pvalue) if w is not None else None,
    }
