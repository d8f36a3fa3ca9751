"""Callbacks shared by every task."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import lightning as L

from studykit.utils.io import atomic_write_text


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

    def bind(self, run_dir: str | Path, stage: str) -> "LossHistory":
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
