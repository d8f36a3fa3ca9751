"""Cross-validation in one command: `data.fold=k` picks the fold, a Hydra sweep over it runs every fold, and
`evaluate.py folds=<sweep>` pools the folds' test predictions (every sample once) - on real JAFFE photos."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
from omegaconf import OmegaConf

from studykit.data.folds import fold_roles, group_folds
from studykit.evaluation.runner import evaluate
from tests.conftest import DATA_ROOT, ROOT, compose_cfg
from tests.test_expression import TINY_JAFFE


def test_fold_k_tests_k_and_validates_on_the_next():
    assert [fold_roles(k, 5) for k in range(5)] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]
    assert fold_roles(None, 5, test_fold=2, val_fold=4) == (2, 4)  # runs saved before `fold`
    with pytest.raises(ValueError, match="outside 0..4"):
        fold_roles(5, 5)
    with pytest.raises(ValueError, match="must differ"):
        fold_roles(None, 5, test_fold=3, val_fold=3)


def test_stratified_group_folds_hold_every_class_and_every_group_once():
    groups = [f"photo{i}" for i in range(60)]
    labels = ["a"] * 30 + ["b"] * 20 + ["c"] * 10
    folds = group_folds(groups, 5, labels, seed=1)
    assert sorted(folds) == sorted(groups)
    for fold in range(5):
        counts = Counter(lab for g, lab in zip(groups, labels) if folds[g] == fold)
        assert counts == {"a": 6, "b": 4, "c": 2}
    assert folds != group_folds(groups, 5, labels, seed=2) and folds == group_folds(groups, 5, labels, seed=1)


def test_one_command_runs_every_fold_and_evaluate_pools_them(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY_JAFFE if o != "callbacks.progress=null"] + ["callbacks.progress=null"]
    command = [sys.executable, "train.py", "-m", *tiny, "model=efficientnet_lite0", "trainer.max_epochs=1",
               "trainer.limit_train_batches=2", "phase.stages.head_only.epochs=0", "data.fold=0,1,2",
               f"hydra.sweep.dir={sweep}", f"paths.cache_dir={shared_cache}", "logger=csv"]
    env = {**os.environ, "STUDYKIT_DATA_ROOT": str(DATA_ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    members = sorted(p.parent for p in sweep.glob("*/config_resolved.yaml"))
    assert len(members) == 3
    assert sorted(OmegaConf.load(m / "config_resolved.yaml").data.fold for m in members) == [0, 1, 2]

    report = evaluate(compose_cfg("evaluate", [f"folds={sweep}"], tmp_path / "ev"))
    per_fold = [json.loads((m / "test_report.json").read_text()) for m in members]
    n = sum(r["n_samples"] for r in per_fold)
    assert report["n_samples"] == n == report["coverage"]["samples"] == report["coverage"]["tested_once"]
    # the pooled accuracy is the benchmark's sample-weighted mean of the folds' accuracies, on the same runs
    assert report["accuracy"] == pytest.approx(sum(r["accuracy"] * r["n_samples"] for r in per_fold) / n, abs=1e-6)
    assert len(report["confusion_matrix"]) == 7 and sum(map(sum, report["confusion_matrix"])) == n
    assert report["per_fold_mean_std"]["accuracy"]["mean"] == pytest.approx(sum(r["accuracy"] for r in per_fold) / 3)
    text = (sweep / "cross_validation" / "test_report.md").read_text()
    assert "Folds (3; every one of the" in text and "mean +- std over folds" in text

    # a fold missing: refused, naming the samples no fold tested
    partial = tmp_path / "partial"
    for m in members[:2]:
        shutil.copytree(m, partial / m.name)
    with pytest.raises(ValueError, match="in no fold's test split"):
        evaluate(compose_cfg("evaluate", [f"folds={partial}"], tmp_path / "ev2"))
    # a member trained on other data settings: refused
    cfg_file = partial / members[1].name / "config_resolved.yaml"
    cfg = OmegaConf.load(cfg_file)
    cfg.data.input_size = 48
    OmegaConf.save(cfg, cfg_file)
    shutil.copytree(members[2], partial / members[2].name)
    with pytest.raises(ValueError, match="differs .* in more than the fold"):
        evaluate(compose_cfg("evaluate", [f"folds={partial}"], tmp_path / "ev3"))
