"""The multiclass suite against scikit-learn on the same predictions."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from studykit.losses import CrossEntropyLoss
from studykit.metrics.classification import classification_report


def test_suite_matches_sklearn():
    rng = np.random.default_rng(0)
    n, k = 200, 7
    target = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[target] * rng.uniform(0, 1.5, (n, 1))
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), -1)
    p = probs.numpy().astype(np.float64)
    p = p / p.sum(1, keepdims=True)
    pred = p.argmax(1)
    report = classification_report(probs, torch.tensor(target), [f"c{i}" for i in range(k)])
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(target, pred), abs=1e-6)
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(target, pred), abs=1e-6)
    for avg in ("macro", "micro"):
        assert report[f"precision_{avg}"] == pytest.approx(skm.precision_score(target, pred, average=avg), abs=1e-6)
        assert report[f"recall_{avg}"] == pytest.approx(skm.recall_score(target, pred, average=avg), abs=1e-6)
        assert report[f"f1_{avg}"] == pytest.approx(skm.f1_score(target, pred, average=avg), abs=1e-6)
    assert report["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(target, pred), abs=1e-5)
    assert report["matthews_corrcoef"] == pytest.approx(skm.matthews_corrcoef(target, pred), abs=1e-5)
    assert report["log_loss"] == pytest.approx(skm.log_loss(target, p, labels=list(range(k))), rel=1e-4)
    assert report["roc_auc_ovr"] == pytest.approx(skm.roc_auc_score(target, p, multi_class="ovr", average="macro"), abs=1e-4)
    assert report["confusion_matrix"] == skm.confusion_matrix(target, pred, labels=list(range(k))).tolist()
    per_class = skm.precision_recall_fscore_support(target, pred, labels=list(range(k)))
    for i in range(k):
        row = report["per_class"][f"c{i}"]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((per_class[0][i], per_class[1][i], per_class[2][i]), abs=1e-6)
        assert row["support"] == per_class[3][i]


def test_cross_entropy_with_class_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    plain = CrossEntropyLoss()(logits, target)
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert plain.item() == pytest.approx(expected.item())
    weighted = CrossEntropyLoss(class_weights=[1.0, 1.0, 3.0])(logits, target)
    lsm = torch.log_softmax(logits, -1)
    assert weighted.item() == pytest.approx(((-lsm[0, 0]) * 1 + (-lsm[1, 2]) * 3).item() / 4)
