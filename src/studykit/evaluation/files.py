"""What a run leaves on disk and how it is read back: its config, checkpoints, sweep members, and the
per-sample score files that ensembles, sweep summaries and paired tests compare."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from studykit.builders import build_module
from studykit.data.base import fits_on_val
from studykit.utils.io import csv_text, safe_torch_load
from studykit.utils.trust import check_config


def run_config(run_dir: Path) -> DictConfig:
    """A run's saved config, checked before anything is built from it: a run folder may come from elsewhere,
    and its config may name only trusted code (studykit.utils.trust)."""
    resolved = Path(run_dir) / "config_resolved.yaml"
    if not resolved.is_file():
        raise FileNotFoundError(f"{resolved} not found: {run_dir} is not a train.py output folder")
    cfg = OmegaConf.load(resolved)
    check_config(cfg, str(resolved))
    return cfg


def best_checkpoint(run_dir: Path, cfg: DictConfig) -> Path:
    """The weights a run tested: its last phase's best.ckpt, or last.ckpt where it trained on the validation
    split (`data.fit_splits`) and had no epoch to choose."""
    stages = list(OmegaConf.to_container(cfg.phase.stages))
    name = "last.ckpt" if fits_on_val(cfg) else "best.ckpt"
    path = Path(run_dir) / "checkpoints" / stages[-1] / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run's last phase ({stages[-1]}) saved no {name}")
    return path


def without_pretrained(cfg: DictConfig) -> DictConfig:
    """A copy of a run's config whose networks start with no pretrained weights: the checkpoint then sets every
    tensor, so loading a trained run never reads the file, package or hub it was first initialised from (a
    run transferred from another run keeps working when that run is moved; a hub run loads offline)."""
    plain = OmegaConf.to_container(cfg, resolve=True)

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ({"source": "none"} if k == "pretrained" and isinstance(v, dict) else strip(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return OmegaConf.create(strip(plain))


def load_trained_module(run_dir: Path, cfg: DictConfig, checkpoint: Path | None = None):
    """The run's LightningModule (laid out as its hardware config says) with the weights of `checkpoint`,
    by default the one it tested (`best_checkpoint`); in eval mode. No pretrained source is read."""
    module = build_module(without_pretrained(cfg))
    module.load_state_dict(safe_torch_load(checkpoint or best_checkpoint(run_dir, cfg))["state_dict"])
    return module.eval()


def sweep_members(folder: Path) -> list[Path]:
    """Finished members of a multirun folder (those with checkpoints and no failure)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    members = sorted(p.parent for p in folder.glob("*/config_resolved.yaml")
                     if not (p.parent / "failure.json").exists() and (p.parent / "checkpoints").is_dir())
    if not members:
        raise FileNotFoundError(f"{folder} holds no finished train.py runs (folders with config_resolved.yaml and checkpoints)")
    return members


def configuration_key(run_dir: Path) -> str:
    """What distinguishes a member apart from its seed: its Hydra overrides without seed and hydra.*."""
    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        overrides = [o for o in OmegaConf.load(overrides_file) if not str(o).startswith(("seed=", "ckpt_path=", "hydra.", "hydra/"))]
        return " ".join(sorted(map(str, overrides))) or "default"
    name = str(run_config(run_dir).get("run_name", run_dir.name))
    return name.rsplit("-s", 1)[0]


def per_sample_csv(ids: Iterable[str], values: Iterable[float], name: str) -> str:
    """One score per test sample (e.g. its mean pixel error): what paired tests between runs compare."""
    return csv_text(["id", name], ([i, f"{v:.6f}"] for i, v in zip(ids, values)))


def read_per_sample(path: Path) -> tuple[list[str], np.ndarray]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: the run predates per-sample scores; re-test it with evaluate.py run_dir=...")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return [r[0] for r in rows], np.asarray([float(r[1]) for r in rows])


def landmark_predictions_csv(pred_px: torch.Tensor, image_ids: Sequence[str], categories: Sequence[str]) -> str:
    k = pred_px.shape[1]
    return csv_text(["image_id", "category"] + [f"{axis}{i + 1}" for i in range(k) for axis in ("x", "y")],
                    ([image_ids[i], categories[i]] + [f"{v:.3f}" for v in pred_px[i].reshape(-1).tolist()]
                     for i in range(pred_px.shape[0])))


def read_landmark_predictions(path: Path) -> tuple[list[str], torch.Tensor]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    ids = [r[0] for r in rows]
    values = torch.tensor([[float(v) for v in r[2:]] for r in rows], dtype=torch.float32)
    return ids, values.view(len(rows), -1, 2)


def probability_predictions_csv(probs: torch.Tensor, image_ids: Sequence[str], classes: Sequence[str],
                                target: torch.Tensor | None = None) -> str:
    """One row per sample: its id, (true label,) predicted class and every class probability."""
    header = ["image_id"] + (["label"] if target is not None else []) + ["predicted"] + [f"p_{c}" for c in classes]
    rows = ([image_ids[i]] + ([classes[int(target[i])]] if target is not None else []) + [classes[int(probs[i].argmax())]]
            + [f"{v:.5f}" for v in probs[i].tolist()] for i in range(probs.shape[0]))
    return csv_text(header, rows)


def distribution_predictions_csv(pred: torch.Tensor, target: torch.Tensor, ids: Sequence[str], classes: Sequence[str]) -> str:
    header = ["image_id"] + [f"pred_{c}" for c in classes] + [f"votes_{c}" for c in classes]
    rows = ([row_id] + [f"{v:.5f}" for v in pred[i].tolist()] + [f"{v:.5f}" for v in target[i].tolist()] for i, row_id in enumerate(ids))
    return csv_text(header, rows)
