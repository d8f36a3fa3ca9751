"""Landmark regression: LandmarkModule, predictions in pixels of the original image, flip TTA with the
left/right pairs swapped back (and shifted views, data.tta_shift_px), the pixel-error report, overlays and summary plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from studykit.builders import normalization
from studykit.data.images import read_grey
from studykit.data.paths import relative_posix
from studykit.evaluation import landmarks as lm
from studykit.evaluation.files import landmark_predictions_csv, per_sample_csv
from studykit.evaluation.plots import overlay, summary_plots, write_overlays
from studykit.inference.inputs import OK, PredictRequest, read_grey_inputs
from studykit.metrics.landmark import report_markdown
from studykit.tasks.base import Task, TestRun, register_task
from studykit.utils.io import atomic_write_image, atomic_write_text, csv_text


@register_task
class LandmarkTask(Task):
    name = "landmarks"
    module_class = "studykit.models.landmark_module.LandmarkModule"
    datamodule_classes = ("studykit.data.landmark_datamodule.LandmarkDataModule",)
    primary_metric = {"name": "mean_px", "mode": "min"}
    per_sample_name = "mean_px"
    output_description = ("(N, K, 2) landmark coordinates (x, y) in [0, 1] of the input; multiply by each original "
                          "image's width and height for pixels")

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
        test, dm = run.test_set, run.datamodule
        return lm.error_report(pred, lm.targets_px(test), test.category, dm.categories, dm.landmark_names, dm.nme_pair,
                               dm.failure_threshold)

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
            offset = test.offset[:, None, :]  # cropped samples: photo pixels -> the stored crop's pixels
            t_img, p_img = ((target - offset) * scale).numpy(), ((pred - offset) * scale).numpy()
            point_errors = torch.linalg.vector_norm(pred - target, dim=-1).numpy()
            write_overlays(out_dir / "images", images, t_img, p_img, cats, test.image_id, point_errors.mean(1))
            summary_plots(out_dir / "plots", point_errors, cats, images, t_img, p_img, test.image_id, title="")

    def summary_line(self, report: dict[str, Any]) -> str:
        split = report.get("split", "test")  # evaluate.py split=val scores the validation split
        nme = report.get("nme")
        extra = f"; NME {nme['mean']:.4f}, failures {nme['failure_rate']:.1%} (> {nme['failure_threshold']})" if nme else ""
        return f"{split} mean {report['mean_px']:.2f} px, median {report['median_px']:.2f} px on {report['n_images']} images{extra}"

    # ---- new images -----------------------------------------------------------------------------------
    def predict_new(self, request: PredictRequest) -> dict[str, Any]:
        """Each image grey, enhanced and resized as the run's cache was; coordinates in each image's own pixels
        (any size); the members' mean; `visualize` draws an overlay per image."""
        from studykit.data.landmark_datamodule import LandmarkDataset

        data = OmegaConf.to_container(request.run_cfg.data, resolve=True)
        options, k = request.options, int(data["prepare"]["num_landmarks"])
        rows, tensors = read_grey_inputs(request.files, data["prepare"])
        n = tensors["images"].shape[0]
        pred = torch.zeros(n, k, 2)
        if n:
            tensors.update({"landmarks": torch.zeros(n, k, 2), "category": torch.zeros(n, dtype=torch.long)})
            dataset = LandmarkDataset(tensors, int(data["input_size"]), False, {}, data["flip_pairs"], *normalization(request.run_cfg))
            loader = DataLoader(dataset, batch_size=int(options.batch_size), shuffle=False)
            perm = lm.flip_perm_for(k, data["flip_pairs"])
            shift_px = int(data.get("tta_shift_px", 0)) if options.tta else 0
            pred = torch.stack([lm.predict(net, loader, tta=bool(options.tta), perm=perm, width=tensors["images"].shape[-1],
                                           shift_px=shift_px) for net in request.nets]).mean(0)
        header = ["file", "width", "height", *[f"{a}{i}" for i in range(1, k + 1) for a in ("x", "y")], "status", "reason"]
        lines, j = [], 0
        for row in rows:
            coords = [f"{v:.4f}" for v in pred[j].reshape(-1).tolist()] if row["status"] == OK else [""] * (2 * k)
            lines.append([row["file"], row["width"], row["height"], *coords, row["status"], row["reason"]])
            if row["status"] == OK:
                if options.get("visualize"):
                    write_landmark_overlay(request.out / "overlays", Path(row["file"]), request.input_root, pred[j].numpy())
                j += 1
        atomic_write_text(request.out / "predictions.csv", csv_text(header, lines))
        return {"task": self.name, "images": len(rows), "predicted": n, "predictions": pred}

    def export_constants(self, cfg: DictConfig) -> dict[str, Any]:
        data = OmegaConf.to_container(cfg.data, resolve=True)
        k = int(data["prepare"]["num_landmarks"])
        from studykit.data.landmark_datamodule import point_names

        return {"landmark_names": point_names(k, data.get("landmark_names")), "flip_pairs": data["flip_pairs"],
                "grey_image_size": int(data["prepare"]["image_size"]), "clahe": data["prepare"].get("clahe"),
                "resize": "grey image -> grey_image_size (cv2 INTER_AREA) -> input_size (bilinear), replicated to 3 channels"}


def write_landmark_overlay(folder: Path, path: Path, input_root: Path, points: np.ndarray) -> Path:
    """<folder>/<the image's path under the input>_landmarks.png: subfolders kept and the suffix kept in the
    name, so a.png and a.jpg, or two a.png of different subfolders, get overlays of their own."""
    image = read_grey(path)
    scale = min(2.0, 800 / max(image.shape))  # large X-rays drawn at most 800 px wide
    relative = Path(relative_posix(path, input_root)) if path != input_root else Path(path.name)
    target = folder / relative.parent / f"{relative.name}_landmarks.png"
    return atomic_write_image(target, overlay(image, None, points, scale=scale))
