"""The task layer: one `Task` per kind of study, registered by name, that `train.py`, `evaluate.py`,
`predict.py` and `export.py` look up instead of inspecting class names.

A task owns its study: its LightningModule (by class path, which only trains and logs), the data modules and
losses it accepts, its primary metric (which early stopping and checkpoints monitor, see
`studykit.config.task_monitor`), prediction on a test split (with flip TTA), its metrics, the files of a test
report, the one-line summary printed at the end of a command, prediction on new images and what an exported
model needs beside it. Everything an evaluation mode needs beyond that (ensembles, sweep summaries, paired
tests) is generic and lives in `studykit.evaluation.runner`; predict.py and export.py are generic loops too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf


class TestRun(Protocol):
    """What a task needs of a loaded run (`studykit.evaluation.runner.LoadedRun`)."""

    run_dir: Path
    cfg: DictConfig
    checkpoint: Path
    module: Any
    datamodule: Any
    test_set: Any

    def test_loader(self) -> Any: ...


class Task:
    name: str = ""
    module_class: str = ""                  # dotted path of the task's LightningModule
    datamodule_classes: tuple[str, ...] = ()  # dotted paths of the data modules that serve it
    primary_metric: dict[str, str] = {}
    # what per-sample score test_per_sample.csv holds (paired tests compare it)
    per_sample_name: str = ""
    # what the exported network outputs (preprocessing.json)
    output_description: str = ""

    # ---- prediction and scoring ------------------------------------------------------------------------
    def predict(self, run: TestRun, tta: bool) -> torch.Tensor:
        """The test split's predictions in the task's output space (pixels, class probabilities)."""
        raise NotImplementedError

    def tta_views(self, run: TestRun) -> str:
        """What `predict(run, tta=True)` averages, for titles and reports."""
        return "flip"

    def combine(self, predictions: Sequence[torch.Tensor]) -> torch.Tensor:
        """An ensemble's prediction: the members' mean (coordinates, probabilities)."""
        shapes = {tuple(p.shape) for p in predictions}
        if len(shapes) != 1:
            raise ValueError(f"ensemble members predict different shapes: {sorted(shapes)}")
        return torch.stack(list(predictions)).mean(0)

    def metrics(self, pred: torch.Tensor, run: TestRun) -> dict[str, Any]:
        """The test report's numbers for `pred` on the run's test split."""
        raise NotImplementedError

    def per_sample(self, pred: torch.Tensor, run: TestRun) -> list[float]:
        raise NotImplementedError

    # ---- files ----------------------------------------------------------------------------------------
    def prediction_files(self, pred: torch.Tensor, run: TestRun) -> dict[str, str]:
        """test_predictions.csv and test_per_sample.csv (file name -> text) for `pred` on the test split."""
        raise NotImplementedError

    def write(self, out_dir: Path, pred: torch.Tensor, run: TestRun, report: dict[str, Any], title: str,
              visualize: bool, options: dict[str, Any]) -> None:
        """The task's files beside test_report.json: predictions, markdown report, per-sample scores, plots."""
        raise NotImplementedError

    def summary_line(self, report: dict[str, Any]) -> str:
        raise NotImplementedError

    # ---- new images and exported models ---------------------------------------------------------------
    def predict_new(self, request: Any) -> dict[str, Any]:
        """predict.py: the request's images (`studykit.inference.inputs.PredictRequest`) preprocessed as the run
        was trained, predicted by its networks (mean over an ensemble, flip TTA on request); writes
        predictions.csv (a row per image or face, unreadable ones with a status and a reason) into request.out
        and returns counts and the predictions tensor."""
        raise NotImplementedError

    def export_constants(self, cfg: DictConfig) -> dict[str, Any]:
        """export.py: what preprocessing.json says beyond input size, statistics and channels (names, the
        grey size and enhancement, the face pipeline)."""
        raise NotImplementedError

    # ---- config checks --------------------------------------------------------------------------------
    def accepts_loss(self, loss_cfg: DictConfig) -> bool:
        cls = get_class(str(loss_cfg._target_))
        return self.name in getattr(cls, "tasks", (self.name,))


TASKS: dict[str, Task] = {}


def register_task(task_cls: type[Task]) -> type[Task]:
    task = task_cls()
    if not task.name or task.name in TASKS:
        raise ValueError(f"task name {task.name!r} is empty or registered twice")
    TASKS[task.name] = task
    return task_cls


def get_task(name: str) -> Task:
    import studykit.tasks  # noqa: F401  (registers the built-in tasks)

    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(TASKS)}")
    return TASKS[name]


def task_of(cfg: DictConfig) -> Task:
    """The task of a composed or saved run config: `task.name`, or for runs saved before tasks had names,
    the registered task whose LightningModule the run was trained with."""
    name = OmegaConf.select(cfg, "task.name")
    if name:
        return get_task(str(name))
    target = str(OmegaConf.select(cfg, "task.module._target_", default=""))
    get_task("landmarks")  # import the registry
    for task in TASKS.values():
        if task.module_class == target:
            return task
    raise KeyError(f"the config names no task (task.name) and its module {target!r} belongs to none of {sorted(TASKS)}")
