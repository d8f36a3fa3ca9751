"""`preprocess.py`: list a face data set and run its configured stages through the cached pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from studykit.preprocessing.faces import STAGES
from studykit.preprocessing.pipeline import Stage, StageResult, run_pipeline
from studykit.utils.io import protect, sha256_file

log = logging.getLogger(__name__)


def jaffe_label(path: Path) -> tuple[str, str]:
    """'KA.AN1.39.tiff' -> subject 'KA', expression 'AN'."""
    parts = path.name.split(".")
    if len(parts) < 3 or len(parts[1]) < 2:
        raise ValueError(f"{path}: not a JAFFE file name (SUBJECT.EXPRn.ID.tiff)")
    return parts[0], parts[1][:2]


def list_images(root: Path, pattern: str, limit: int | None = None) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (set paths.data_root or STUDYKIT_DATA_ROOT)")
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no images matching {pattern!r} in {root}")
    return files[:limit] if limit else files


def build_stages(pipeline: dict[str, Any]) -> list[Stage]:
    stages = []
    for name in pipeline["stages"]:
        if name not in STAGES:
            raise ValueError(f"unknown preprocessing stage {name!r}; stages: {list(STAGES)}")
        stages.append(Stage(name, STAGES[name], dict(pipeline.get(name) or {})))
    return stages


def preprocess_faces(root: str | Path, cache_dir: str | Path, prepare: dict[str, Any]) -> tuple[dict[str, Any], list[StageResult]]:
    """List the images under `root` (prepare: pattern, labels_from, limit) and run prepare['pipeline']."""
    root = Path(root)
    protect(root)  # the data sets are read-only: no stage may write next to its inputs
    files = list_images(root, prepare.get("pattern", "*"), prepare.get("limit"))
    labels = [jaffe_label(p) for p in files] if prepare.get("labels_from") == "jaffe_filename" else [("", "")] * len(files)
    state = {"paths": [str(p) for p in files], "subjects": [s for s, _ in labels], "labels": [e for _, e in labels]}
    source = {"files": [(p.relative_to(root).as_posix(), sha256_file(p)) for p in files], "labels": state["labels"]}
    return run_pipeline(build_stages(prepare["pipeline"]), cache_dir, source, state)


def preprocess(cfg: DictConfig) -> tuple[dict[str, Any], list[StageResult]]:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return preprocess_faces(data["root"], data["cache_dir"], data["prepare"])
