"""`train.py`: one loop for every task and phase plan - stages, checkpoints, resume - then the test of the best
weights through the evaluation code (`studykit.evaluation.runner`)."""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from studykit.builders import build_datamodule, build_module, fill_from_data
from studykit.config import check_pairing, resumed_run_dir
from studykit.data.base import fits_on_val
from studykit.evaluation.runner import LoadedRun, default_folder, evaluate_loaded
from studykit.training.callbacks import AtomicCheckpointIO, LossHistory, stage_seconds
from studykit.utils.io import (
    TruncatedFileError,
    atomic_write_json,
    guard_outputs,
    previous_copy,
    safe_torch_load,
)
from studykit.utils.run_info import save_run_info

log = logging.getLogger(__name__)


STAGE_KEYS = ("epochs", "freeze_backbone", "optimizer")


def stage_plan(cfg: DictConfig) -> list[tuple[str, dict[str, Any]]]:
    stages = OmegaConf.to_container(cfg.phase.stages, resolve=True)
    if not stages:
        raise ValueError("phase.stages is empty: choose phase=head_only, finetune or two_phase")
    for name, stage in stages.items():
        missing = [k for k in STAGE_KEYS if k not in stage]
        if missing:
            raise ValueError(
                f"phase stage {name!r} lacks {missing} (it has only {sorted(stage)}): an override such as "
                f"phase.stages.{name}.epochs=... names a stage this phase plan does not define"
            )
    cap = cfg.trainer.get("max_epochs")
    if cap is not None:  # trainer.max_epochs caps every phase, e.g. for quick checks
        for stage in stages.values():
            stage["epochs"] = min(int(stage["epochs"]), int(cap))
    return list(stages.items())


def build_loggers(cfg: DictConfig, stage: str) -> list:
    loggers = []
    for spec in (cfg.get("logger") or {}).values():
        if spec is None or "_target_" not in spec:
            continue
        if spec._target_.endswith("WandbLogger"):
            # one W&B run per phase, grouped under the run name
            loggers.append(instantiate(spec, name=f"{cfg.run_name}-{stage}", group=cfg.run_name))
        else:
            loggers.append(instantiate(spec, version=stage))
    return loggers


def build_trainer(cfg: DictConfig, stage: str, stage_cfg: dict[str, Any], run_dir: Path) -> tuple[L.Trainer, Any]:
    callbacks, checkpoint = [], None
    refit = fits_on_val(cfg)
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None:
            continue
        if name in ("model_checkpoint", "last_checkpoint"):
            if refit and name == "model_checkpoint":
                continue  # no validation to choose an epoch by: last_checkpoint's last.ckpt is the one kept
            saver = instantiate(spec, dirpath=str(run_dir / "checkpoints" / stage))
            callbacks.append(saver)
            checkpoint = saver if name == "model_checkpoint" or refit else checkpoint
        elif name == "early_stopping":
            if refit:
                continue
            patience = stage_cfg.get("patience", spec.get("patience"))
            callbacks.append(instantiate(spec, patience=patience))
        elif name == "lr_monitor" and not cfg.get("logger"):
            continue  # LearningRateMonitor refuses to run without a logger
        else:
            cb = instantiate(spec)
            if isinstance(cb, LossHistory):
                cb.bind(run_dir, stage)
            callbacks.append(cb)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs = {k: v for k, v in trainer_kwargs.items() if v is not None and k != "max_epochs"}
    if refit:
        trainer_kwargs.update(limit_val_batches=0, num_sanity_val_steps=0)
    # `callbacks.progress: null` means no bar: Lightning would add its own rich bar, whose refresh thread takes
    # about 6% of the samples of a profiled CXR training run on the two cores
    trainer_kwargs.setdefault("enable_progress_bar", any(isinstance(cb, ProgressBar) for cb in callbacks))
    trainer = L.Trainer(
        max_epochs=int(stage_cfg["epochs"]),
        callbacks=callbacks,
        logger=build_loggers(cfg, stage) or False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        **trainer_kwargs,
    )
    return trainer, checkpoint


def load_weights(module: L.LightningModule, ckpt_path: str | Path) -> None:
    state = safe_torch_load(ckpt_path)
    module.load_state_dict(state["state_dict"])


def finish_loggers(trainer: L.Trainer) -> None:
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


def peak_memory_mb() -> dict[str, float]:
    out = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def resume_point(ckpt_path: str | Path) -> Path:
    """The checkpoint to resume from: `ckpt_path`, checked to load safely (a crafted file is refused, with its
    name); where it is truncated or missing, the copy it replaced (`last.ckpt.prev`), with a warning."""
    path = Path(ckpt_path)
    try:
        safe_torch_load(path)
        return path
    except (TruncatedFileError, FileNotFoundError) as err:
        previous = previous_copy(path)
        if not previous.is_file():
            raise
        safe_torch_load(previous)
        log.warning("%s; resuming from the checkpoint it replaced, %s (one epoch earlier)", err, previous)
        return previous


def continue_run_folder(cfg: DictConfig) -> Path:
    """The folder this run writes to. A resume (ckpt_path) continues the run folder of its checkpoint, whatever
    folder the command line would have made: its best checkpoint and score, history and logs live there, and
    `evaluate.py run_dir=<that folder>` then tests the truly best weights."""
    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("ckpt_path"):
        origin = Path(resumed_run_dir(str(cfg.ckpt_path), str(run_dir)))
        if origin.resolve() != run_dir.resolve():
            log.info("resume: continuing the run folder %s of ckpt_path (not %s)", origin, run_dir)
            with open_dict(cfg):
                cfg.paths.output_dir = str(origin)
            run_dir = origin
    return run_dir


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run every stage of the phase plan, then test the best weights; returns the run summary."""
    check_pairing(cfg)
    plan = stage_plan(cfg)
    resume_stage = Path(cfg.ckpt_path).parent.name if cfg.get("ckpt_path") else None
    if resume_stage is not None and resume_stage not in dict(plan):
        raise ValueError(f"ckpt_path {cfg.ckpt_path}: its folder {resume_stage!r} is not a stage of this phase plan {[s for s, _ in plan]}")
    resume_from = resume_point(cfg.ckpt_path) if resume_stage is not None else None  # checked before anything is written
    run_dir = continue_run_folder(cfg)
    guard_outputs(cfg.paths.get("data_root"), run_dir, cfg.paths.get("cache_dir"))
    if cfg.hardware.get("num_threads"):
        torch.set_num_threads(int(cfg.hardware.num_threads))

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()  # a file lock makes ranks started together build the cache once
    # seeded after the cache is prepared: building it (MTCNN's networks, say) draws from torch's generator, and a run
    # that builds its cache must train as one that finds it built
    L.seed_everything(int(cfg.seed), workers=True)
    manifest = datamodule.manifest()
    fill_from_data(cfg, datamodule)
    if rank_zero_only.rank == 0:
        save_run_info(run_dir, cfg, {"data_manifest_hash": manifest["config_hash"], "data_cache": str(datamodule.cache_folder)})
    module = build_module(cfg)

    refit = fits_on_val(cfg)
    if refit:
        log.info("data.fit_splits=%s: the validation split is trained on, so nothing is validated and each stage "
                 "keeps its last epoch", list(cfg.data.fit_splits))

    summary: dict[str, Any] = {"run_name": cfg.run_name, "seed": int(cfg.seed), "stages": {}}
    best_path: str | None = None
    trainer = None
    skipping = resume_stage is not None
    for stage, stage_cfg in plan:
        if skipping and stage != resume_stage:
            log.info("resume: skipping finished stage %s", stage)
            continue
        ckpt_path = str(resume_from) if skipping else None
        skipping = False
        if best_path and ckpt_path is None:
            load_weights(module, best_path)  # phase k starts from phase k-1's best weights
            log.info("stage %s starts from %s", stage, best_path)
        module.set_stage(stage_cfg)
        trainer, checkpoint = build_trainer(cfg, stage, stage_cfg, run_dir)
        start = time.perf_counter()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except FloatingPointError as err:
            # the monitor-less last_checkpoint's file (every epoch's), else best.ckpt
            latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None and cb.best_model_path]
            kept = latest[0] if latest else (checkpoint.best_model_path if checkpoint is not None else None)
            raise FloatingPointError(f"{err}; last good checkpoint: {kept or 'none saved yet'}") from err
        # a resumed stage: the epochs of earlier processes count too (history.csv keeps their times)
        seconds = stage_seconds(run_dir / "history.csv", stage) or (time.perf_counter() - start)
        finish_loggers(trainer)
        epochs_run = trainer.current_epoch if not trainer.fast_dev_run else 1
        best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
        best_score = checkpoint.best_model_score if checkpoint is not None else None
        summary["stages"][stage] = {
            "epochs_run": int(epochs_run),
            "seconds": seconds,
            "seconds_per_epoch": seconds / max(1, epochs_run),
            "best_checkpoint": best_path,
            "best_score": float(best_score) if best_score is not None else None,
            "monitor": None if refit else cfg.task.monitor,
        }
    summary["memory"] = peak_memory_mb()

    if cfg.get("test", True) and rank_zero_only.rank == 0:
        if best_path:
            load_weights(module, best_path)
        # the test goes through evaluate.py's own code (the task's prediction, metrics and files), on the
        # weights in memory: the same report as `evaluate.py run_dir=<this run>`
        run = LoadedRun.from_training(run_dir, cfg, module, datamodule, best_path)
        summary["test"] = evaluate_loaded(run, tta=False, out_dir=run_dir, title=f"Test report: {cfg.get('run_name')}")
        print_result(summary["test"], "", run_dir / "test_report.md")
        if cfg.get("test_tta"):
            out = run_dir / default_folder("evaluation", True, "test")
            summary["test_tta"] = evaluate_loaded(run, tta=True, out_dir=out)
            print_result(summary["test_tta"], f"with TTA ({summary['test_tta']['tta_views']}) ", out / "test_report.md")
    summary["memory"] = peak_memory_mb()
    if rank_zero_only.rank == 0:
        atomic_write_json(run_dir / "train_summary.json", summary)
    return summary


def print_result(report: dict[str, Any], label: str, path: Path) -> None:
    """Printed, not only logged: the last lines a user sees at the end of a run."""
    primary = report["primary_metric"]["name"]
    median = f", median {report['median_px']:.2f} px" if "median_px" in report else ""
    samples = report.get("n_images", report.get("n_samples", -1))
    print(f"test {primary} {label}{report[primary]:.4f}{median} on {samples} samples; report: {path}", flush=True)
