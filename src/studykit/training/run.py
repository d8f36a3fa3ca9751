"""Compose-and-run logic behind `train.py` and `evaluate.py`: one loop for every task and phase plan."""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from studykit.config import check_pairing, resumed_run_dir
from studykit.data.base import fits_on_val
from studykit.tasks import task_of
from studykit.training.callbacks import AtomicCheckpointIO, LossHistory, stage_seconds
from studykit.utils.io import (
    TruncatedFileError,
    atomic_write_json,
    atomic_write_text,
    guard_outputs,
    previous_copy,
    safe_torch_load,
)
from studykit.utils.run_info import save_run_info

log = logging.getLogger(__name__)


def normalization(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """The input mean and std of the run's backbone: the model owns normalisation (model.input_mean/std)."""
    return list(cfg.model.input_mean), list(cfg.model.input_std)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module, normalising images as the model asks (the data config holds no statistics)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("mean", "std"):  # runs saved before the model owned normalisation have them in data
        data.pop(key, None)
    if "model" not in cfg:  # prepare.py: building the cache needs no normalisation
        return instantiate(data)
    mean, std = normalization(cfg)
    return instantiate(data, mean=mean, std=std)


DATA_FILLED = ("num_classes", "classes", "in_chans", "num_landmarks", "categories")


def fill_from_data(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Set what the task leaves open (???), such as the number of classes, from the prepared data, so the
    saved config holds the real values."""
    for key in DATA_FILLED:
        if key in cfg.task.module.keys() and OmegaConf.is_missing(cfg.task.module, key):
            cfg.task.module[key] = getattr(datamodule, key)


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule | None = None) -> L.LightningModule:
    """The task's LightningModule with its loss, laid out and compiled as `hardware` says. What the task
    leaves open (???) comes from `datamodule` when given (train.py fills it before saving the config)."""
    if datamodule is not None:
        fill_from_data(cfg, datamodule)
    loss = instantiate(cfg.loss, _convert_="all")
    module = instantiate(cfg.task.module, loss=loss)
    apply_hardware(module, cfg.get("hardware") or {})
    return module


def apply_hardware(module: L.LightningModule, hardware: DictConfig | dict) -> None:
    """hardware.channels_last: weights and batches in NHWC; hardware.compile: torch.compile the network in
    place (its state_dict keys stay the same, so checkpoints load either way)."""
    if hardware.get("channels_last", False):
        module.use_channels_last(True)
    if hardware.get("compile", False):
        module.net.compile()


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
    for name, spec in (cfg.get("logger") or {}).items():
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
    L.seed_everything(int(cfg.seed), workers=True)
    if cfg.hardware.get("num_threads"):
        torch.set_num_threads(int(cfg.hardware.num_threads))

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()  # a file lock makes ranks started together build the cache once
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

    if cfg.get("test", True):
        if best_path:
            load_weights(module, best_path)
        summary["test"] = test_and_report(cfg, module, datamodule, run_dir, checkpoint=best_path)
        if cfg.get("test_tta") and rank_zero_only.rank == 0:
            summary["test_tta"] = test_with_tta(run_dir)
    summary["memory"] = peak_memory_mb()
    if rank_zero_only.rank == 0:
        atomic_write_json(run_dir / "train_summary.json", summary)
    return summary


def test_with_tta(run_dir: Path) -> dict[str, Any]:
    """The run's tested weights again with TTA (flip, and the task's other views), by evaluate.py's code:
    <run>/evaluation_tta/."""
    from studykit.evaluation.runner import default_folder, evaluate_single

    report = evaluate_single(run_dir, tta=True)
    print_result(report, f"with TTA ({report['tta_views']}) ", run_dir / default_folder("evaluation", True, "test") / "test_report.md")
    return report


def print_result(report: dict[str, Any], label: str, path: Path) -> None:
    """Printed, not only logged: the last lines a user sees at the end of a run."""
    primary = report["primary_metric"]["name"]
    median = f", median {report['median_px']:.2f} px" if "median_px" in report else ""
    samples = report.get("n_images", report.get("n_samples", -1))
    print(f"test {primary} {label}{report[primary]:.4f}{median} on {samples} samples; report: {path}", flush=True)


def test_and_report(
    cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: Path, checkpoint: str | None
) -> dict[str, Any]:
    """Test `module` and write test_report.json, test_report.md and the module's files into out_dir."""
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    # under DDP every rank tests the whole split (no distributed sampler, metrics not synced), so the
    # report is exact and rank 0 writes it
    trainer = L.Trainer(
        accelerator=trainer_kwargs["accelerator"],
        devices=trainer_kwargs["devices"],
        num_nodes=trainer_kwargs.get("num_nodes", 1),
        strategy=trainer_kwargs.get("strategy", "auto"),
        precision=trainer_kwargs["precision"],
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=trainer_kwargs.get("limit_test_batches") or 1.0,
        default_root_dir=str(out_dir),
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = module.test_report()
    if not trainer.is_global_zero:
        return metrics
    report = {
        "run_name": cfg.get("run_name"),
        "checkpoint": checkpoint,
        "seed": cfg.get("seed"),
        "model": cfg.model.backbone.name,
        "task": task_of(cfg).name,
        "loss": cfg.loss.get("_target_"),
        **metrics,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "test_report.json", report)
    atomic_write_text(out_dir / "test_report.md", module.test_markdown(metrics, f"Test report: {cfg.get('run_name')}"))
    # the task writes the prediction files, as every evaluation mode does; it reads what a loaded run offers
    trained = SimpleNamespace(module=module, datamodule=datamodule, test_set=datamodule.test_set)
    for name, content in task_of(cfg).prediction_files(module.test_outputs(), trained).items():
        atomic_write_text(out_dir / name, content)
    print_result(report, "", out_dir / "test_report.md")
    return report
