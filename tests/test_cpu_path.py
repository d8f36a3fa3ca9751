"""The fast CPU path (channels_last, bf16 autocast, torch.compile) and the per-step warm-up schedulers."""

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from studykit.builders import build_datamodule, build_module
from studykit.evaluation.runner import LoadedRun, read_landmark_predictions
from studykit.models.base import warmup_cosine_factor
from studykit.training.run import train

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
FAST = ["model=resnet18", "phase=finetune", "phase.stages.finetune.epochs=1", *SHORT]


def with_data(cfg):
    """A config and its data module: the landmark task takes its number of points and categories from it."""
    return cfg, build_datamodule(cfg)


def conv_weights(module):
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_cpu_hardware_lays_weights_and_batches_out_channels_last(make_cfg):
    cfg = make_cfg(FAST)
    assert cfg.hardware.channels_last is True
    module = build_module(cfg, build_datamodule(cfg))
    weights = conv_weights(module)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights if w.shape[-1] > 1)
    # every input batch, from Lightning or from the evaluation code, reaches the network in that layout
    seen = []
    handle = module.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        module.eval()(torch.randn(2, 3, 64, 64))
    handle.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    nchw = build_module(*with_data(make_cfg([*FAST, "hardware.channels_last=false"])))
    assert not nchw.channels_last and conv_weights(nchw)[0].is_contiguous()
    # the layout changes speed, not values
    nchw.load_state_dict(module.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = module.eval()(x.contiguous(memory_format=torch.channels_last))
        b = nchw.eval()(x)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_channels_last_run_reloads_and_predicts_the_same(make_cfg, precision, capsys):
    cfg = make_cfg([*FAST, f"hardware.precision={precision}"])
    summary = train(cfg)
    run = Path(cfg.paths.output_dir)
    # the run ends by printing its test mean / median px and where its report is
    printed = capsys.readouterr().out
    assert "test mean_px" in printed and "median" in printed and str(run / "test_report.md") in printed
    report = json.loads((run / "test_report.json").read_text())
    assert math.isfinite(summary["stages"]["finetune"]["best_score"]) and math.isfinite(report["mean_px"])
    ids, trained = read_landmark_predictions(run / "test_predictions.csv")
    assert trained.shape == (8, 15, 2) and torch.isfinite(trained).all()
    loaded = LoadedRun(run)
    assert loaded.module.channels_last
    again = loaded.predict(tta=False)
    # the reloaded best checkpoint, under the run's own precision, gives the run's test predictions
    # (the CSV keeps 4 decimals)
    assert torch.allclose(again, trained, atol=2e-3)


def test_warmup_cosine_factor_per_step():
    f = warmup_cosine_factor(total_steps=20, warmup_steps=4, final_factor=0.0)
    values = [f(s) for s in range(21)]
    assert values[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear warm-up, then the peak
    assert all(a > b for a, b in zip(values[4:20], values[5:21]))  # then strictly down
    assert values[12] == pytest.approx(0.5)  # cosine halfway through the decay
    assert values[20] == pytest.approx(0.0)
    assert warmup_cosine_factor(10, 0, final_factor=0.1)(10) == pytest.approx(0.1)


@pytest.mark.parametrize("phase,warmup_key", [("warmup_cosine", "warmup"), ("onecycle", "pct_start")])
def test_schedulers_step_both_parameter_groups(make_cfg, phase, warmup_key):
    """The phase configs' partial optimizer and scheduler, built as training builds them."""
    cfg = make_cfg(["model=resnet18", f"phase={phase}", "phase.stages.finetune.optimizer.backbone_lr=1e-4",
                    f"phase.stages.finetune.scheduler.{warmup_key}=0.25", "+phase.stages.finetune.scheduler.total_steps=40"])
    module = build_module(cfg, build_datamodule(cfg))
    module.set_stage(OmegaConf.to_container(cfg.phase.stages.finetune, resolve=True))
    conf = module.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 1e-2
    lrs = []
    for _ in range(40):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    head, backbone = zip(*lrs)
    peak = max(range(40), key=lambda i: head[i])
    assert peak in (9, 10) and head[peak] == pytest.approx(1e-3, rel=1e-3)  # the top after 25% of the steps
    assert head[0] < 0.2e-3 and head[-1] < 0.05e-3
    assert all(b / h == pytest.approx(0.1) for h, b in zip(head, backbone))  # the backbone keeps its tenth


def test_epoch_cosine_takes_the_stage_epochs_and_frozen_stage_one_group(make_cfg):
    cfg = make_cfg(["model=resnet18", "phase=two_phase"])
    module = build_module(cfg, build_datamodule(cfg))
    module.set_stage(OmegaConf.to_container(cfg.phase.stages.head_only, resolve=True))
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and [g["name"] for g in optimizer.param_groups] == ["head"]
    module.set_stage({**OmegaConf.to_container(cfg.phase.stages.finetune, resolve=True), "epochs": 7})
    conf = module.configure_optimizers()
    scheduler = conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "epoch" and scheduler.T_max == 7 and scheduler.eta_min == 2e-6
    assert [g["lr"] for g in conf["optimizer"].param_groups] == [2e-4, 2e-5]


def test_bad_optimizer_and_scheduler_configs_are_named(make_cfg):
    module = build_module(*with_data(make_cfg(["model=resnet18"])))
    module.set_stage({"freeze_backbone": False, "optimizer": {"lr": 1e-3}})
    with pytest.raises(ValueError, match="needs a _target_"):
        module.configure_optimizers()
    module.set_stage({"freeze_backbone": False, "optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-3},
                      "scheduler": {"_target_": "torch.optim.lr_scheduler.LinearLRR"}})
    with pytest.raises(Exception, match="LinearLRR"):
        module.configure_optimizers()
    module.set_stage({"freeze_backbone": False, "optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-3},
                      "scheduler": {"_target_": "torch.optim.lr_scheduler.LinearLR", "interval": "batch"}})
    with pytest.raises(ValueError, match="'batch'"):
        module.configure_optimizers()


@pytest.mark.slow
def test_compiled_network_matches_eager(make_cfg):
    cfg = make_cfg(["model=resnet18"])
    eager = build_module(cfg, build_datamodule(cfg)).eval()
    compiled = build_module(*with_data(make_cfg(["model=resnet18", "hardware.compile=true"]))).eval()
    compiled.load_state_dict(eager.state_dict())  # compiling in place keeps the state_dict keys
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-4)
