"""A trained landmark run (e.g. experiment=face68_helen) as the face pipeline's landmark back end, in place of
dlib's predictor: face box -> the square crop the run was trained on -> points in photo pixels.

The run was trained on crops around the annotated points (`data.prepare.crop.scale` x their extent). From a
detector's box the crop is estimated through `box_mapping` (detector box -> the points' extent box, fitted by
benchmarks/face_landmarks.py on training faces); with `passes: 2` the crop is then re-cut around the points the
first pass found, as in training, and the network predicts again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf

from studykit.builders import normalization
from studykit.data.images import crop_square, from_crop, points_square
from studykit.evaluation.files import best_checkpoint, load_trained_module, run_config
from studykit.preprocessing.dlib68 import map_box
from studykit.utils.io import sha256_file


def run_fingerprint(params: dict[str, Any]) -> dict[str, Any]:
    """What keys the landmark stage's cache beyond its parameters: the content of the run's tested weights, so a
    run retrained in the same folder rebuilds the stage."""
    run = (params.get("run") or {}) if params.get("backend", "dlib") == "run" else {}
    if not run.get("run_dir"):
        return {}
    run_dir = Path(run["run_dir"])
    return {"weights_sha256": sha256_file(best_checkpoint(run_dir, run_config(run_dir)))}


class RunLandmarks:
    """Points of one face at a time from a trained landmark run (its best checkpoint, no pretrained source read)."""

    def __init__(self, run_dir: str | Path, box_mapping: dict[str, float] | None = None, passes: int = 2):
        self.run_dir = Path(run_dir)
        cfg = run_config(self.run_dir)
        data = OmegaConf.to_container(cfg.data, resolve=True)
        crop = (data.get("prepare") or {}).get("crop")
        if not crop:
            raise ValueError(f"{self.run_dir}: the run was not trained on face crops (data.prepare.crop); "
                             "the landmark stage needs a run such as experiment=face68_helen")
        self.scale = float(crop.get("scale", 1.5))
        self.image_size = int(data["prepare"]["image_size"])
        self.input_size = int(data["input_size"])
        self.num_points = int(data["prepare"]["num_landmarks"])
        mean, std = normalization(cfg)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.module = load_trained_module(self.run_dir, cfg)
        self.mapping = dict(box_mapping) if box_mapping else None
        if int(passes) not in (1, 2):
            raise ValueError(f"landmarks.run.passes must be 1 or 2, got {passes}")
        self.passes = int(passes)

    def start_square(self, box: np.ndarray) -> tuple[float, float, float]:
        """The crop (x0, y0, side) for a detector's face box: the box mapped to the points' extent, then squared
        and scaled as in training."""
        pts_box = map_box(box, self.mapping) if self.mapping else np.asarray(box, dtype=np.float32)
        corners = np.array([[pts_box[0], pts_box[1]], [pts_box[2], pts_box[3]]], dtype=np.float32)
        return points_square(corners, self.scale)

    @torch.no_grad()
    def predict_square(self, grey: np.ndarray, square: tuple[float, float, float]) -> np.ndarray:
        x0, y0, side = square
        crop = crop_square(grey, x0, y0, side, self.image_size)
        if self.input_size != self.image_size:
            crop = cv2.resize(crop, (self.input_size, self.input_size), interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(crop).float().div_(255.0)[None, None].expand(1, 3, -1, -1)
        pred = self.module((image - self.mean) / self.std)[0].float().numpy()  # (K, 2) in [0, 1] of the input
        return from_crop(pred * self.image_size, x0, y0, side, self.image_size)

    def points(self, grey: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(K, 2) points in photo pixels for the face in `box` (x1, y1, x2, y2) of the grey photo."""
        pts = self.predict_square(grey, self.start_square(box))
        if self.passes == 2:
            pts = self.predict_square(grey, points_square(pts, self.scale))
        return pts
