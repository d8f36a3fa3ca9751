"""Callbacks shared by every task."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from studykit.utils.io import atomic_torch_save, atomic_write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file beside their target, fsynced, then renamed over it - never through
    the system temp folder, whose final move is a copy when it lies on another filesystem (a kill mid-copy
    would leave a truncated last.ckpt). Files named in `keep_previous` (the resume points) keep the copy they
    replace as `<name>.prev`, which a resume falls back to when the newest one is damaged. Writes into a
    read-only data root are refused (studykit.utils.io.check_writable)."""

    def __init__(self, keep_previous: tuple[str, ...] = ("last.ckpt",)):
        super().__init__()
        self.keep_previous = tuple(keep_previous)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path, keep_previous=Path(path).name in self.keep_previous)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also resumes in a run folder that was moved or copied since: the saved
    best score, best file and top-k files are mapped from the folder they were saved in to this one (Lightning
    itself keeps only `best_model_path` then, still pointing into the old folder)."""

    @property
    def state_key(self) -> str:
        # the same key as ModelCheckpoint's, so checkpoints of either class resume with the other
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_in = state_dict.get("dirpath")
        if saved_in and self.dirpath and os.path.abspath(saved_in) != os.path.abspath(self.dirpath):
            def moved(path: Any) -> Any:
                if not path or os.path.dirname(os.path.abspath(path)) != os.path.abspath(saved_in):
                    return path
                return os.path.join(self.dirpath, os.path.basename(path))

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{key: moved(state_dict.get(key)) for key in ("best_model_path", "kth_best_model_path", "last_model_path")
                             if key in state_dict},
                          "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)


class LossHistory(L.Callback):
    """Per-epoch train and validation loss (and every other epoch metric) appended to `history.csv`.

    One file per run across phases; the `stage` column tells them apart. Rewritten atomically each epoch,
    so an interrupted run keeps the history up to its last finished epoch. `epoch_seconds` (training and
    validation of the epoch) lets a run resumed across sessions report its whole time (`stage_seconds`).
    """

    def __init__(self, filename: str = "history.csv"):
        self.filename = filename
        self.path: Path | None = None
        self.stage = "train"
        self.rows: list[dict] = []

    def bind(self, run_dir: str | Path, stage: str) -> LossHistory:
        self.path = Path(run_dir) / self.filename
        self.stage = stage
        if self.path.is_file() and not self.rows:
            self.rows = list(csv.DictReader(self.path.open()))
        return self

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = time.perf_counter()
        # the learning rates this epoch trains with (an epoch scheduler steps before on_train_epoch_end)
        self.epoch_lrs = {
            f"lr_{g.get('name', i)}": g["lr"] for opt in trainer.optimizers for i, g in enumerate(opt.param_groups)
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.startswith("lr-")}
        lrs = getattr(self, "epoch_lrs", {})
        # rows are keyed by (stage, epoch): a resumed run overwrites the epoch it redoes
        self.rows = [r for r in self.rows if not (r.get("stage") == self.stage and int(r["epoch"]) == trainer.current_epoch)]
        seconds = time.perf_counter() - getattr(self, "epoch_start", time.perf_counter())
        self.rows.append({"stage": self.stage, "epoch": trainer.current_epoch, **metrics, **lrs, "epoch_seconds": seconds})
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        fields: list[str] = []
        for row in self.rows:
            fields += [k for k in row if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def stage_seconds(history: Path, stage: str) -> float | None:
    """The summed `epoch_seconds` of a stage in history.csv - over every process that trained it - or None
    where an epoch lacks the column (histories written before it existed)."""
    if not history.is_file():
        return None
    rows = [r for r in csv.DictReader(history.open()) if r.get("stage") == stage]
    if not rows or any(not r.get("epoch_seconds") for r in rows):
        return None
    return sum(float(r["epoch_seconds"]) for r in rows)
