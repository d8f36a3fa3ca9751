"""The face pipeline over a listed source: the configured stages checked and run through the cached pipeline
(studykit.preprocessing.pipeline), with a report of the rows the source left out. What a source is - which
files, labels, subjects and splits - is the data source's business (studykit.data.face_sources)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from studykit.data.paths import relative_posix
from studykit.preprocessing.faces import STAGE_ALIASES, STAGES
from studykit.preprocessing.pipeline import Stage, StageResult, run_pipeline
from studykit.utils.io import atomic_write_json, make_dirs, protect, sha256_file

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What the pipeline runs on: image files with a label and a subject or split tag each, and the rows
    of the data set that were left out before any stage ran, with the reason for each."""

    paths: list[Path]
    labels: list[str]
    subjects: list[str]
    splits: list[str]
    excluded: list[dict[str, str]] = field(default_factory=list)
    votes: list[np.ndarray] = field(default_factory=list)  # per image, the annotators' distribution (FER+)


def write_source_report(cache_dir: Path, source: Source) -> None:
    reasons = Counter(e["reason"].split(":")[0] for e in source.excluded)
    report = {"listed": len(source.paths) + len(source.excluded), "kept": len(source.paths),
              "kept_per_split": dict(Counter(source.splits)), "kept_per_label": dict(Counter(source.labels)),
              "excluded": len(source.excluded), "excluded_by_reason": dict(reasons), "excluded_rows": source.excluded}
    atomic_write_json(cache_dir / "source_report.json", report)
    if source.excluded:
        log.warning("%d rows left out before preprocessing (%s); listed in %s", len(source.excluded),
                    ", ".join(f"{n} {r}" for r, n in reasons.most_common()), cache_dir / "source_report.json")


def build_stages(pipeline: dict[str, Any]) -> list[Stage]:
    """The configured stages in order, checked up front: each stage's inputs must come from an earlier one."""
    stages, made = [], set()
    for configured in pipeline["stages"]:
        name = STAGE_ALIASES.get(configured, configured)
        if name not in STAGES:
            raise ValueError(f"unknown preprocessing stage {configured!r}; stages: {list(STAGES)}")
        spec = STAGES[name]
        missing = [need for need in spec.needs if need not in made]
        if missing:
            raise ValueError(f"preprocessing stage {name!r} needs {missing}, which no earlier stage in "
                             f"data.prepare.pipeline.stages={list(pipeline['stages'])} makes")
        made |= set(spec.makes)
        stages.append(replace(spec, params=dict(pipeline.get(configured) or pipeline.get(name) or {})))
    return stages


def preprocess_faces(root: str | Path, cache_dir: str | Path, prepare: dict[str, Any],
                     src: Source) -> tuple[dict[str, Any], list[StageResult]]:
    """Run prepare['pipeline'] over the images of `src` (files under `root`, which is read-only)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (set paths.data_root or STUDYKIT_DATA_ROOT)")
    protect(root)  # the data sets are read-only: no stage may write next to its inputs
    stages = build_stages(prepare["pipeline"])
    make_dirs(cache_dir)  # refused inside the data root
    write_source_report(Path(cache_dir), src)
    state = {"paths": [str(p) for p in src.paths], "subjects": src.subjects, "labels": src.labels, "splits": src.splits}
    if src.votes:  # read afresh from the vote table each time: no stage uses them, so they key no cache
        state["votes"] = torch.from_numpy(np.stack(src.votes))
    source = {"files": [(relative_posix(p, root), sha256_file(p)) for p in src.paths], "labels": src.labels,
              "subjects": src.subjects, "splits": src.splits}
    return run_pipeline(stages, cache_dir, source, state)
