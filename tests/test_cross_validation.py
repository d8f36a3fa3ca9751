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


def test_train_py_trains_exactly_as_a_plain_pytorch_loop(tmp_path, monkeypatch):
    """The class-folder recipe's refit through train.py (Lightning, phases, warm-up + cosine per step, the last epoch
    kept) and a plain PyTorch loop over the same network, initial weights and batches end on the same weights: what
    the framework adds to training changes nothing. Draws are switched off (no shuffle, flips, rotations or dropout)
    so that both see the same numbers; the run builds its face cache and the replay finds it built, so the seed
    must not depend on which happened."""
    import lightning as L
    import torch

    from studykit.builders import build_datamodule, build_module
    from studykit.data.base import CachedDataModule
    from studykit.models.base import warmup_cosine_factor
    from studykit.training.run import train
    from studykit.utils.io import safe_torch_load

    tiny = ["data=jaffe", *[o for o in TINY_JAFFE if not o.startswith("experiment=")]]  # the same cached faces
    overrides = [*tiny, "model=efficientnet_lite0", "model/head=linear", "model.head.dropout=[0.0]", "phase=warmup_cosine",
                 "phase.stages.finetune.epochs=2", "trainer.limit_train_batches=3", "data.batch_size=8", "data.fit_splits=[train,val]",
                 "data.augment.hflip_p=0", "data.augment.rotate_p=0", "hardware.channels_last=false", "seed=5"]
    monkeypatch.setattr(CachedDataModule, "train_dataloader", lambda self: self._loader(self.train_set, shuffle=False))
    cfg = compose_cfg("train", overrides, tmp_path / "run", tmp_path / "cache")
    train(cfg)  # builds the face cache first: training as a run that finds it built (the replay below)
    trained = safe_torch_load(tmp_path / "run" / "checkpoints" / "finetune" / "last.ckpt")["state_dict"]

    L.seed_everything(5)  # as train.py: seeded once the cache is ready, then the task's module built
    dm = build_datamodule(cfg)
    dm.prepare_data()
    net = build_module(cfg, dm).net
    dm.setup("fit")
    batches = [b for _, b in zip(range(3), dm.train_dataloader())]
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_factor(2 * 3, round(0.1 * 2 * 3)))
    net.train()
    for _ in range(2):
        for batch in batches:
            loss = torch.nn.functional.cross_entropy(net(batch["image"]), batch["target"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    plain = net.state_dict()
    assert set(trained) == {f"net.{k}" for k in plain}
    moved = max((trained[f"net.{k}"].float() - v.float()).abs().max().item() for k, v in build_module(cfg, dm).net.state_dict().items()
                if v.is_floating_point())
    differ = max(((trained[f"net.{k}"].float() - v.float()).abs().max().item(), k) for k, v in plain.items())
    assert moved > 1e-3 and differ[0] < 1e-6, (moved, differ)
