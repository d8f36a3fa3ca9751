"""Landmark regression: LandmarkModule, predictions in pixels of the original image, flip TTA with the
left/right pairs swapped back (and shifted views, data.tta_shift_px), the pixel-error report, overlays and summary plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from studykit.evaluation import landmarks as lm
from studykit.evaluation.files import landmark_predictions_csv, per_sample_csv
from studykit.evaluation.plots import summary_plots, write_overlays
from studykit.metrics.landmark import report_markdown
from studykit.tasks.base import Task, TestRun, register_task
from studykit.utils.io import atomic_write_text


@register_task
class LandmarkTask(Task):
    name = "landmarks"
    module_class = "studykit.models.landmark_module.LandmarkModule"
    datamodule_classes = ("studykit.data.landmark_datamodule.LandmarkDataModule",)
    primary_metric = {"name": "mean_px", "mode": "min"}
    per_sample_name = "mean_px"

    def predict(self, run: TestRun, tta: bool) -> torch.Tensor:
        perm = lm.flip_perm_for(run.datamodule.num_landmarks, run.datamodule.flip_pairs)
        width = run.test_set.images.shape[-1]
        # shift views belong to TTA: a plain test is one view, as in training's test step
        shift_px = run.datamodule.tta_shift_px if tta else 0
        return lm.predict(run.module, run.test_loader(), tta=tta, perm=perm, width=width, shift_px=shift_px)

    def tta_views(self, run: TestRun) -> str:
        shift = run.datamodule.tta_shift_px
        return f"flip + shifts of {shift} px" if shift else "flip"

    def metrics(self, pred: torch.Tensor, run: TestRun) -> dict[str, Any]:
        test = run.test_set
        return lm.error_report(pred, lm.targets_px(test), test.category, run.datamodule.categories)

    def per_sample(self, pred: torch.Tensor, run: TestRun) -> list[float]:
        return lm.per_image_errors(pred, lm.targets_px(run.test_set)).tolist()

    def prediction_files(self, pred: torch.Tensor, run: TestRun) -> dict[str, str]:
        test, n = run.test_set, len(pred)
        cats = [run.datamodule.categories[int(c)] for c in test.category[:n]]
        errors = lm.per_image_errors(pred, lm.targets_px(test)[:n]).tolist()
        return {"test_predictions.csv": landmark_predictions_csv(pred, test.image_id[:n], cats),
                "test_per_sample.csv": per_sample_csv(test.image_id[:n], errors, self.per_sample_name)}

    def write(self, out_dir: Path, pred: torch.Tensor, run: TestRun, report: dict[str, Any], title: str,
              visualize: bool, options: dict[str, Any]) -> None:
        test, names = run.test_set, run.datamodule.categories
        cats = [names[int(c)] for c in test.category]
        atomic_write_text(out_dir / "test_report.md", report_markdown(report, title=title))
        for name, text in self.prediction_files(pred, run).items():
            atomic_write_text(out_dir / name, text)
        if visualize:
            # drawn in the cached images' pixels
            target = lm.targets_px(test)
            scale = torch.tensor([test.images.shape[-1], test.images.shape[-2]]) / test.orig_size[:, None, :]
            images = test.images.numpy()
            t_img, p_img = (target * scale).numpy(), (pred * scale).numpy()
            point_errors = torch.linalg.vector_norm(pred - target, dim=-1).numpy()
            write_overlays(out_dir / "images", images, t_img, p_img, cats, test.image_id, point_errors.mean(1))
            summary_plots(out_dir / "plots", point_errors, cats, images, t_img, p_img, test.image_id, title="")

    def summary_line(self, report: dict[str, Any]) -> str:
        split = report.get("split", "test")  # evaluate.py split=val scores the validation split
        return f"{split} mean {report['mean_px']:.2f} px, median {report['median_px']:.2f} px on {report['n_images']} images"
