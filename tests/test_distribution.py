"""Label-distribution learning on FER+ votes: conversion, losses and metrics against scipy, training runs."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from scipy import special, stats

from studykit.builders import build_datamodule
from studykit.data.ferplus import RAW_CLASSES, prepare_ferplus, votes_to_distribution
from studykit.evaluation.runner import summarize_sweep
from studykit.losses import CombinedLoss, KLDivergenceLoss, L1Loss, MSELoss
from studykit.metrics.distribution import DistributionMetrics, per_sample_scores
from studykit.training.run import train
from studykit.utils.io import safe_torch_load
from tests.conftest import DATA_ROOT, compose_cfg

FERPLUS = DATA_ROOT / "ferplus"
SPLITS = {"train": "data/FER2013Train", "val": "data/FER2013Valid", "test": "data/FER2013Test"}
TINY_FER = ["experiment=ferplus_distribution", "data.prepare.limit_per_split={train:96,val:32,test:32}",
            "data.input_size=48", "data.batch_size=16", "callbacks.progress=null", "trainer.enable_model_summary=false"]


def real_rows(n=3):
    with open(FERPLUS / "data/FER2013Train/label.csv", newline="") as fh:
        return [row for _, row in zip(range(n), csv.reader(fh))]


def test_votes_to_distribution_on_real_rows():
    rows = real_rows()
    votes = np.asarray([[float(v) for v in r[2:]] for r in rows])
    dist8, ok8 = votes_to_distribution(votes, range(8))
    dist10, ok10 = votes_to_distribution(votes, range(10))
    assert ok8.all() and ok10.all()
    for i in range(len(rows)):
        assert np.allclose(dist8[i], votes[i, :8] / votes[i, :8].sum())
        assert np.allclose(dist10[i], votes[i] / votes[i].sum())
    assert rows[1][0] == "fer0000001.png" and votes[1, 8] == 2  # 'unknown' votes vanish from the 8 emotions
    assert np.allclose(dist8[1], np.array([6, 0, 1, 1, 0, 0, 0, 0]) / 8)
    empty, ok = votes_to_distribution(np.array([[0, 0, 0, 0, 0, 0, 0, 0, 7, 3]], dtype=float), range(8))
    assert not ok[0] and empty.sum() == 0


def test_prepare_counts_dropped_rows_and_keeps_real_votes(tmp_path):
    status = prepare_ferplus(FERPLUS, tmp_path, SPLITS, classes="emotions8", limit_per_split={"train": 20, "val": 5, "test": 5})
    report = json.loads((status.path / "report.json").read_text())
    assert report["classes"] == list(RAW_CLASSES[:8])
    assert report["splits"]["train"]["no_votes_in_class_set"] >= 1  # counted, and the names listed
    assert len(report["no_votes"]["train"]) == report["splits"]["train"]["no_votes_in_class_set"]
    train = safe_torch_load(status.path / "train.pt")
    assert train["images"].shape == (20, 48, 48) and train["distribution"].shape == (20, 8)
    assert torch.allclose(train["distribution"].sum(1), torch.ones(20))
    assert train["image_id"][0] == "fer0000000.png"
    assert train["distribution"][0].tolist() == pytest.approx([0.4, 0, 0, 0.1, 0.3, 0.2, 0, 0])
    raw = prepare_ferplus(FERPLUS, tmp_path, SPLITS, classes="raw10", limit_per_split={"train": 5, "val": 5, "test": 5})
    assert raw.path != status.path and safe_torch_load(raw.path / "val.pt")["distribution"].shape[1] == 10


def logits_and_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 8, generator=g) * 3
    target = torch.rand(5, 8, generator=g)
    target[:, 2] = 0.0  # empty classes, as in real votes
    return logits, target / target.sum(1, keepdim=True)


def test_losses_against_scipy_and_hand_values():
    logits, target = logits_and_target()
    probs = torch.softmax(logits, -1)
    assert MSELoss(input="logits")(logits, target).item() == pytest.approx(((probs - target) ** 2).mean().item())
    assert L1Loss(input="logits")(logits, target).item() == pytest.approx((probs - target).abs().mean().item())
    expected_kl = np.mean([stats.entropy(t, p) for t, p in zip(target.numpy(), probs.numpy())])
    assert KLDivergenceLoss()(logits, target).item() == pytest.approx(expected_kl, abs=1e-4)
    # stable at extreme logits and zero targets
    extreme = torch.tensor([[1000.0, -1000.0, 0.0]])
    value = KLDivergenceLoss()(extreme, torch.tensor([[0.0, 1.0, 0.0]]))
    assert torch.isfinite(value) and value.item() > 100
    with pytest.raises(ValueError, match="needs logits"):
        KLDivergenceLoss(input="values")
    combo = CombinedLoss({"kl": {"loss": KLDivergenceLoss(), "weight": 1.0}, "l1": {"loss": L1Loss(input="logits"), "weight": 0.5}})
    expected = KLDivergenceLoss()(logits, target).item() + 0.5 * L1Loss(input="logits")(logits, target).item()
    assert combo(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_metrics_against_scipy():
    logits, target = logits_and_target(1)
    probs = torch.softmax(logits, -1)
    metric = DistributionMetrics([f"c{i}" for i in range(8)])
    metric.update(probs[:3], target[:3])
    metric.update(probs[3:], target[3:])
    report = metric.report()
    p, t = probs.numpy().astype(np.float64), target.numpy().astype(np.float64)
    emd = [stats.wasserstein_distance(np.arange(8), np.arange(8), u_weights=pi, v_weights=ti) for pi, ti in zip(p, t)]
    assert report["emd"] == pytest.approx(np.mean(emd), rel=1e-4)
    assert report["kl"] == pytest.approx(np.mean(special.rel_entr(t, p).sum(1)), rel=1e-4)
    assert report["tvd"] == pytest.approx(np.mean(0.5 * np.abs(p - t).sum(1)), rel=1e-5)
    assert report["mse"] == pytest.approx(np.mean((p - t) ** 2), rel=1e-5)
    assert report["cross_entropy"] == pytest.approx(np.mean(-(t * np.log(p)).sum(1)), rel=1e-4)
    assert report["accuracy"] == pytest.approx(np.mean(p.argmax(1) == t.argmax(1)))
    assert per_sample_scores(target, target)["kl"].abs().max() < 1e-6


@pytest.mark.slow
def test_fast_dev_run_on_real_faces(tmp_path, shared_cache):
    cfg = compose_cfg("train", [*TINY_FER, "data.prepare.limit_per_split={train:256,val:64,test:64}", "trainer.fast_dev_run=true"],
                      tmp_path / "run", shared_cache)
    train(cfg)
    report = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert report["n_samples"] == 64 and report["primary_metric"]["name"] == "kl"
    assert 0 <= report["tvd"] <= 1 and report["kl"] > 0 and cfg.task.module.num_classes == 8


@pytest.mark.slow
def test_thirteen_class_vote_table_needs_no_code_change(tmp_path, shared_cache):
    """A vote table with 13 classes: the head gets 13 outputs from the data."""
    root = tmp_path / "votes13"
    names = [f"class{i}" for i in range(13)]
    rng = np.random.default_rng(0)
    for src in SPLITS.values():
        folder = root / src
        folder.mkdir(parents=True)
        lines = []
        for row in real_rows(12):
            shutil.copy(FERPLUS / "data/FER2013Train" / row[0], folder / row[0])
            lines.append(",".join([row[0], '"(0, 0, 48, 48)"'] + [str(v) for v in rng.integers(0, 4, 13)]))
        (folder / "label.csv").write_text("\n".join(lines) + "\n")
    cfg = compose_cfg("train", [*TINY_FER, f"data.root={root}", f"data.prepare.raw_classes=[{','.join(names)}]",
                                f"data.prepare.classes=[{','.join(names)}]", "trainer.fast_dev_run=true"],
                      tmp_path / "run", shared_cache)
    summary = train(cfg)
    assert cfg.task.module.num_classes == 13 and summary["test"]["n_samples"] == 12
    assert len(summary["test"]["classes"]) == 13


@pytest.mark.slow
def test_comparison_table_over_two_tiny_runs(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    for i, loss in enumerate(("kl", "mse")):
        cfg = compose_cfg("train", [*TINY_FER, f"loss={loss}", "trainer.max_epochs=1", "trainer.limit_train_batches=2"],
                          sweep / f"{i}-{loss}", shared_cache)
        train(cfg)
    result = summarize_sweep(sweep, out_dir=tmp_path / "summary")
    assert result["primary_metric"]["name"] == "kl" and len(result["configurations"]) == 2
    first = result["configurations"][0]
    for key in ("kl", "tvd", "emd", "mse", "cross_entropy", "accuracy"):
        assert key in first and first[key]["n"] == 1
    assert result["configurations"][0]["kl"]["mean"] <= result["configurations"][1]["kl"]["mean"]
    assert result["paired_test_best_two"]["n"] == 32
    table = (tmp_path / "summary" / "sweep_summary.csv").read_text().splitlines()
    assert len(table) == 3 and "kl_mean" in table[0]


def test_datamodule_reads_classes_from_cache(tmp_path, shared_cache):
    cfg = compose_cfg("train", [*TINY_FER], tmp_path / "run", shared_cache)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    item = dm.train_set[0]
    assert item["image"].shape == (3, 48, 48) and item["target"].shape == (8,)
    assert dm.num_classes == 8 and dm.classes[0] == "neutral"


def test_distribution_folder_from_a_vote_table_trains_with_fer_metrics(tmp_path):
    """Real FER+ faces in subfolders plus a 5-class vote table (counts and probabilities, bad rows among them):
    the cached distributions equal the votes normalised, bad rows are recorded, and a run reports the FER+ metrics."""
    root = tmp_path / "set"
    classes = ["neutral", "happiness", "surprise", "sadness", "anger"]
    rows = [r for r in csv.reader((FERPLUS / SPLITS["test"] / "label.csv").open()) if sum(map(int, r[2:7])) > 0][:60]
    lines, expected = ["image," + ",".join(classes)], {}
    for k, r in enumerate(rows):
        sub = root / "faces" / f"s{k % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(FERPLUS / SPLITS["test"] / r[0], sub / r[0])
        votes = np.asarray([float(v) for v in r[2:7]])
        cells = [f"{v / votes.sum():.4f}" for v in votes] if k % 2 else [str(int(v)) for v in votes]  # probabilities or counts
        lines.append(f"s{k % 3}/{r[0]}," + ",".join(cells))
        expected[f"s{k % 3}/{r[0]}"] = votes / votes.sum()
    lines += ["s0/missing.png,1,0,0,0,0", f"s0/{rows[0][0]},0,0,0,0,0", f"s0/{rows[0][0]},1,-1,0,0,0", f"s0/{rows[0][0]},a,0,0,0,0"]
    (root / "votes.csv").write_text("\n".join(lines) + "\n")
    cfg = compose_cfg("train", ["data=distribution_folder", f"data.root={root}", "data.prepare.images=faces", "data.prepare.image_size=32",
                                "data.input_size=32", "data.split_by=folds", "data.n_folds=3", "data.fold=2", "data.batch_size=16",
                                "model=efficientnet_lite0", "phase=finetune", "trainer.max_epochs=1", "callbacks.progress=null",
                                "trainer.enable_model_summary=false"], tmp_path / "run", tmp_path / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    report = json.loads((dm.cache_folder / "report.json").read_text())
    reasons = {i["line"]: i["reason"] for i in report["issues"]}
    assert report["kept"] == 60 and sorted(reasons) == [62, 63, 64, 65]
    assert "not found" in reasons[62] and "no votes" in reasons[63] and "negative" in reasons[64] and "non-numeric" in reasons[65]
    splits = {s: dm.load_split(s) for s in ("train", "val", "test")}
    assert sum(len(s["image_id"]) for s in splits.values()) == 60 and dm.classes == classes
    for part in splits.values():
        for i, name in enumerate(part["image_id"]):
            assert np.allclose(part["distribution"][i].numpy(), expected[name], atol=1e-4)
    train(cfg)
    test = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert test["n_samples"] == len(splits["test"]["image_id"]) and test["classes"] == classes
    for key in ("kl", "tvd", "emd", "mse", "accuracy"):
        assert np.isfinite(test[key])
