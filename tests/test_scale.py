"""Beyond one process: DDP on CPU (gloo), joblib and SLURM launchers, the Optuna sweeper, sweep reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import DATA_ROOT, ROOT, compose_cfg

pytestmark = pytest.mark.slow
SMOKE = ["experiment=cxr_smoke", "data.prepare.image_size=64", "callbacks.progress=null", "trainer.enable_model_summary=false"]


def run_train(args: list[str], cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDYKIT_DATA_ROOT": str(DATA_ROOT), "STUDYKIT_CACHE_DIR": str(cache), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_ddp_two_cpu_processes_fast_dev_run(tmp_path, shared_cache):
    run = tmp_path / "ddp"
    out = run_train([*SMOKE, "hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2",
                     "hardware.precision=32-true", "trainer.fast_dev_run=true", f"hydra.run.dir={run}"], shared_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stderr + out.stdout
    assert "distributed_backend=gloo" in out.stderr + out.stdout
    report = json.loads((run / "test_report.json").read_text())
    assert report["n_images"] == 8  # every rank tests the whole split; rank 0 writes an exact report


def test_joblib_sweep_reports_a_failed_member_and_finishes_the_other(tmp_path, shared_cache):
    sweep = tmp_path / "sweep"
    out = run_train(["-m", *SMOKE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.fast_dev_run=true",
                     "loss=wing", "loss._target_=studykit.losses.WingLoss,tests.helpers.OutOfMemoryLoss",
                     f"hydra.sweep.dir={sweep}"], shared_cache)
    assert out.returncode != 0  # the sweep as a whole reports failure...
    report = json.loads((sweep / "sweep_report.json").read_text())
    assert report["completed"] == 1 and report["failed"] == 1
    ok, failed = sorted(report["members"], key=lambda m: m["status"])
    assert ok["status"] == "COMPLETED" and (Path(ok["output_dir"]) / "test_report.json").is_file()  # ...the other member finished
    assert "OutOfMemoryError" in failed["error"]
    assert "out of memory" in json.loads((Path(failed["output_dir"]) / "failure.json").read_text())["error"]


def test_optuna_sweeper_two_trials(tmp_path, shared_cache):
    sweep = tmp_path / "optuna"
    out = run_train(["-m", *SMOKE, "phase=warmup_cosine", "hparams_search=cxr_optuna", "hydra.sweeper.n_trials=2",
                     "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false",
                     f"hydra.sweep.dir={sweep}"], shared_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.name == "optuna" and result.best_value > 0
    assert {"phase.stages.finetune.optimizer.lr", "phase.stages.finetune.scheduler.warmup"} <= set(result.best_params)
    report = json.loads((sweep / "sweep_report.json").read_text())
    assert report["completed"] == 2
    values = sorted(m["return_value"] for m in report["members"])
    assert values[0] == pytest.approx(result.best_value)


def test_launcher_configs_compose(tmp_path):
    cfg = compose_cfg("train", ["hydra/launcher=submitit_slurm"], tmp_path)
    cfg = compose_cfg("train", ["experiment=cxr_slurm_ensemble", "hydra.launcher.partition=gpu"], tmp_path)
    assert cfg.hardware.accelerator == "gpu" and cfg.model.backbone.name == "tf_efficientnet_lite0"
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        full = compose("train", overrides=["experiment=cxr_slurm_ensemble", "hydra.launcher.partition=gpu"], return_hydra_config=True)
        joblib = compose("train", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
        ddp = compose("train", overrides=["hardware=ddp", "hardware.num_nodes=2", "hardware.devices=4"], return_hydra_config=True)
    assert full.hydra.launcher._target_.endswith("SlurmLauncher") and full.hydra.launcher.partition == "gpu"
    assert full.hydra.launcher.gpus_per_node == 1 and full.hydra.sweeper.params.seed == "1,2,3,4,5"
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")
    assert (ddp.trainer.strategy, ddp.trainer.num_nodes, ddp.trainer.devices) == ("ddp", 2, 4)
