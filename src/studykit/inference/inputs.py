"""What prediction on new images shares across tasks: listing the input, reading grey images as a run's cache
holds them, and the request a Task answers (`Task.predict_new`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from studykit.data.images import enhance_clahe, read_grey

OK = "ok"
Net = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PredictRequest:
    """One predict.py call as a Task sees it: the options (batch_size, tta, visualize), the run's saved config,
    the networks (one, or an ensemble's members; torch or ONNX), the input files, the input's root folder,
    the output folder and the cache folder for preprocessing that is worth keeping (the face pipeline)."""

    options: DictConfig
    run_cfg: DictConfig
    nets: list[Net]
    files: list[Path]
    input_root: Path
    out: Path
    cache_dir: Path


def list_inputs(path: str | Path) -> list[Path]:
    """A file, or every file under a folder (sorted); a missing or empty input is an error naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"input folder {path} holds no files")
    return files


def read_grey_inputs(files: Sequence[Path], prepare: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (file, width, height, status, reason) and the readable images as a grey cache holds them: CLAHE if
    the run used it, resized to prepare.image_size."""
    size, clahe = int(prepare["image_size"]), dict(prepare.get("clahe") or {})
    rows, images, sizes, ids = [], [], [], []
    for path in files:
        try:
            image = read_grey(path)
        except ValueError as err:
            rows.append({"file": str(path), "width": "", "height": "", "status": "unreadable", "reason": str(err)})
            continue
        h, w = image.shape
        if clahe.get("enabled"):
            image = enhance_clahe(image, clahe["clip_limit"], clahe["tile_grid"])
        if (w, h) != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        rows.append({"file": str(path), "width": w, "height": h, "status": OK, "reason": ""})
        images.append(torch.from_numpy(np.ascontiguousarray(image)))
        sizes.append((float(w), float(h)))
        ids.append(path.name)
    tensors = {"images": torch.stack(images) if images else torch.zeros(0, size, size, dtype=torch.uint8),
               "orig_size": torch.tensor(sizes, dtype=torch.float32).reshape(-1, 2), "image_id": ids}
    return rows, tensors
