"""`predict.py`: a trained run (or a seed ensemble) on images nobody labelled, for every task.

Each image goes through the preprocessing its run was trained with - read from the run's own resolved
config: the X-ray resize and CLAHE for landmarks, the cached face pipeline for expressions, the grey resize
for label distributions - and the model (torch, or the run's exported ONNX file with `engine=onnx`).
Unreadable files and images without a face are rows with a status and a reason, never a crash.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from studykit.data.images import enhance_clahe, read_grey
from studykit.data.paths import relative_posix
from studykit.evaluation import landmarks as lm
from studykit.evaluation.runner import load_trained_module, run_config, sweep_members
from studykit.tasks import task_of
from studykit.training.run import normalization
from studykit.utils import trust
from studykit.utils.io import atomic_write_image, atomic_write_json, atomic_write_text, csv_text, guard_outputs, make_dirs, protect

log = logging.getLogger(__name__)
OK = "ok"
Net = Callable[[torch.Tensor], torch.Tensor]


# ---- inputs ---------------------------------------------------------------------------------------------
def list_inputs(path: str | Path) -> list[Path]:
    """A file, or every file under a folder (sorted); a missing or empty input is an error naming it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"input folder {path} holds no files")
    return files


# ---- models ---------------------------------------------------------------------------------------------
class OnnxNet(torch.nn.Module):
    """An exported network run by onnxruntime, called like the torch module on an NCHW float batch (a
    Module without parameters, so the torch prediction helpers take it as it is)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        super().__init__()
        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model {path} not found: run `python export.py run_dir=...` first")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.contiguous().numpy().astype(np.float32)})[0])


def load_members(cfg: DictConfig) -> tuple[DictConfig, list[Net], list[Path]]:
    """The run's (or the first member's) config, the networks and the run folders."""
    if bool(cfg.get("run_dir")) == bool(cfg.get("ensemble")):
        raise ValueError("give exactly one of run_dir=<train.py run folder> or ensemble=<multirun folder>")
    runs = [Path(cfg.run_dir)] if cfg.get("run_dir") else sweep_members(Path(cfg.ensemble))
    configs = [run_config(r) for r in runs]
    engine = str(cfg.get("engine", "torch"))
    if engine == "torch":
        nets: list[Net] = [load_trained_module(r, c) for r, c in zip(runs, configs)]
    elif engine == "onnx":
        if cfg.get("onnx_path") and len(runs) > 1:
            raise ValueError("onnx_path names one model; an ensemble reads each member's export/model.onnx")
        nets = [OnnxNet(Path(cfg.onnx_path) if cfg.get("onnx_path") else r / "export" / "model.onnx", cfg.get("threads"))
                for r in runs]
    else:
        raise ValueError(f"engine must be torch or onnx, got {engine!r}")
    return configs[0], nets, runs


# ---- landmarks ------------------------------------------------------------------------------------------
def read_xrays(files: Sequence[Path], prepare: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (file, width, height, status, reason) and the readable images as the cache holds them: grey,
    CLAHE if the run used it, resized to prepare.image_size."""
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


def predict_landmarks(cfg: DictConfig, run_cfg: DictConfig, nets: list[Net], files: list[Path], out: Path,
                      input_root: Path) -> dict[str, Any]:
    from studykit.data.landmark_datamodule import LandmarkDataset

    data = OmegaConf.to_container(run_cfg.data, resolve=True)
    k = int(data["prepare"]["num_landmarks"])
    rows, tensors = read_xrays(files, data["prepare"])
    n = tensors["images"].shape[0]
    pred = torch.zeros(n, k, 2)
    if n:
        tensors.update({"landmarks": torch.zeros(n, k, 2), "category": torch.zeros(n, dtype=torch.long)})
        dataset = LandmarkDataset(tensors, int(data["input_size"]), False, {}, data["flip_pairs"], *normalization(run_cfg))
        loader = DataLoader(dataset, batch_size=int(cfg.batch_size), shuffle=False)
        perm = lm.flip_perm_for(k, data["flip_pairs"])
        # each member in pixels of each image's own size; the ensemble is their mean
        shift_px = int(data.get("tta_shift_px", 0)) if cfg.tta else 0
        pred = torch.stack([lm.predict(net, loader, tta=bool(cfg.tta), perm=perm, width=tensors["images"].shape[-1],
                                       shift_px=shift_px) for net in nets]).mean(0)
    header = ["file", "width", "height", *[f"{a}{i}" for i in range(1, k + 1) for a in ("x", "y")], "status", "reason"]
    lines, j = [], 0
    for row in rows:
        coords = [f"{v:.4f}" for v in pred[j].reshape(-1).tolist()] if row["status"] == OK else [""] * (2 * k)
        lines.append([row["file"], row["width"], row["height"], *coords, row["status"], row["reason"]])
        if row["status"] == OK:
            if cfg.get("visualize"):
                write_landmark_overlay(out / "overlays", Path(row["file"]), input_root, pred[j].numpy())
            j += 1
    atomic_write_text(out / "predictions.csv", csv_text(header, lines))
    return {"task": "landmarks", "images": len(rows), "predicted": n, "predictions": pred}


def write_landmark_overlay(folder: Path, path: Path, input_root: Path, points: np.ndarray) -> Path:
    """<folder>/<the image's path under the input>_landmarks.png: subfolders kept and the suffix kept in the
    name, so a.png and a.jpg, or two a.png of different subfolders, get overlays of their own."""
    from studykit.evaluation.plots import overlay

    image = read_grey(path)
    scale = min(2.0, 800 / max(image.shape))  # large X-rays drawn at most 800 px wide
    relative = Path(relative_posix(path, input_root)) if path != input_root else Path(path.name)
    target = folder / relative.parent / f"{relative.name}_landmarks.png"
    return atomic_write_image(target, overlay(image, None, points, scale=scale))


# ---- classification and distributions ---------------------------------------------------------------
def softmax_members(nets: list[Net], dataset, batch_size: int, tta: bool) -> torch.Tensor:
    """Mean softmax probability over the members (and the mirrored image with `tta`)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out = []
    with torch.no_grad():
        for batch in loader:
            x = batch["image"]
            probs = []
            for net in nets:
                probs.append(net(x).float().softmax(-1))
                if tta:  # expressions are mirror-symmetric
                    probs.append(net(torch.flip(x, dims=[3])).float().softmax(-1))
            out.append(torch.stack(probs).mean(0))
    return torch.cat(out) if out else torch.zeros(0)


def face_rows(inputs: Path, prepare: dict[str, Any], cache_dir: Path) -> dict[str, Any]:
    """Run the run's face pipeline (stages and options as trained) over the input file or folder, cached:
    a rerun on the same input only loads."""
    from studykit.preprocessing.run import preprocess_faces

    # a file is that file, never a pattern (`face[1].jpg`); a folder is every file under it
    listing = {"files": [str(inputs)]} if inputs.is_file() else {"pattern": "**/*"}
    root = inputs.parent if inputs.is_file() else inputs
    state, _ = preprocess_faces(root, cache_dir, {**prepare, "labels_from": None, "limit": None, **listing})
    return state


def predict_faces(cfg: DictConfig, run_cfg: DictConfig, nets: list[Net], out: Path, cache_dir: Path) -> dict[str, Any]:
    from studykit.data.expression_datamodule import FaceDataset, face_id

    data = OmegaConf.to_container(run_cfg.data, resolve=True)
    classes = list(run_cfg.task.module.classes)
    state = face_rows(Path(cfg.input).expanduser(), data["prepare"], cache_dir)
    kept = state["kept"].tolist()
    images = state["four_channel"] if "four_channel" in state else state["face_images"]
    probs = torch.zeros(0, len(classes))
    if kept:
        dataset = FaceDataset(images, torch.zeros(len(kept), dtype=torch.long), [face_id(state, i) for i in kept],
                                     int(data["input_size"]), False, {}, *normalization(run_cfg))
        probs = softmax_members(nets, dataset, int(cfg.batch_size), bool(cfg.tta))
    position = {row: j for j, row in enumerate(kept)}
    header = ["file", "face_index", "status", "reason", "box_x1", "box_y1", "box_x2", "box_y2", "predicted", *[f"p_{c}" for c in classes]]
    lines = []
    for i, path in enumerate(state["paths"]):
        face = int(state["face_index"][i]) if "face_index" in state else 0
        box = [f"{v:.1f}" for v in state["boxes"][i].tolist()] if i in position else [""] * 4
        if i in position:
            p = probs[position[i]]
            lines.append([path, face, OK, "", *box, classes[int(p.argmax())], *[f"{v:.6f}" for v in p.tolist()]])
        else:
            status = state["status"][i] if state["status"][i] != OK else "not_kept"
            lines.append([path, face, status, state["reason"][i], *box, "", *[""] * len(classes)])
    atomic_write_text(out / "predictions.csv", csv_text(header, lines))
    return {"task": "classification", "images": len(set(state["paths"])), "faces": len(kept), "predictions": probs,
            "rows": len(lines)}


def predict_distribution(cfg: DictConfig, run_cfg: DictConfig, nets: list[Net], files: list[Path], out: Path) -> dict[str, Any]:
    from studykit.data.distribution_datamodule import DistributionDataset

    data = OmegaConf.to_container(run_cfg.data, resolve=True)
    classes = list(run_cfg.task.module.classes)
    rows, tensors = read_xrays(files, {"image_size": data["prepare"]["image_size"]})  # grey, resized as prepared
    n = tensors["images"].shape[0]
    probs = torch.zeros(0, len(classes))
    if n:
        tensors["distribution"] = torch.zeros(n, len(classes))
        dataset = DistributionDataset(tensors, int(data["input_size"]), False, {}, *normalization(run_cfg))
        probs = softmax_members(nets, dataset, int(cfg.batch_size), bool(cfg.tta))
    header = ["file", "width", "height", "status", "reason", "majority", *[f"p_{c}" for c in classes]]
    lines, j = [], 0
    for row in rows:
        if row["status"] == OK:
            p = probs[j]
            j += 1
            lines.append([row["file"], row["width"], row["height"], OK, "", classes[int(p.argmax())], *[f"{v:.6f}" for v in p.tolist()]])
        else:
            lines.append([row["file"], "", "", row["status"], row["reason"], "", *[""] * len(classes)])
    atomic_write_text(out / "predictions.csv", csv_text(header, lines))
    return {"task": "distribution", "images": len(rows), "predicted": n, "predictions": probs}


# ---- entry ----------------------------------------------------------------------------------------------
def default_predict_dir(base: Path, inputs: Path) -> Path:
    """<run or ensemble>/predictions/<input name>-<8 hex of its absolute path>: two inputs of the same name in
    different folders never share (and overwrite) a predictions folder."""
    digest = hashlib.sha256(os.fsencode(inputs.resolve())).hexdigest()[:8]
    return base / "predictions" / f"{inputs.name}-{digest}"


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict on cfg.input with the run (run_dir) or ensemble; writes predictions.csv (and overlays) to
    predict_dir, default `default_predict_dir`. The input and the data root are read-only: no output may lie
    inside them."""
    if not cfg.get("input"):
        raise ValueError("input=<image file or folder> is required")
    inputs = Path(cfg.input).expanduser()
    files = list_inputs(inputs)
    trust.allow(cfg.get("trusted_targets"))
    run_cfg, nets, runs = load_members(cfg)
    base = Path(cfg.run_dir or cfg.ensemble)
    out = Path(cfg.predict_dir) if cfg.get("predict_dir") else default_predict_dir(base, inputs)
    input_root = inputs if inputs.is_dir() else inputs.parent
    if out.resolve() == input_root.resolve() or input_root.resolve() in out.resolve().parents:
        raise ValueError(f"predict_dir {out} lies inside the input folder {input_root}: the input is read-only")
    protect(input_root)
    cache = Path(cfg.paths.cache_dir) / "predict" / str(run_cfg.data.name)
    guard_outputs(cfg.paths.get("data_root"), out, cache)
    make_dirs(out)
    task = task_of(run_cfg).name
    if task == "landmarks":
        result = predict_landmarks(cfg, run_cfg, nets, files, out, input_root)
    elif task == "classification":
        result = predict_faces(cfg, run_cfg, nets, out, cache)
    else:
        result = predict_distribution(cfg, run_cfg, nets, files, out)
    summary = {k: v for k, v in result.items() if k != "predictions"}
    summary.update({"runs": [str(r) for r in runs], "engine": str(cfg.get("engine", "torch")), "tta": bool(cfg.tta),
                    "input": str(cfg.input), "predictions_csv": str(out / "predictions.csv")})
    atomic_write_json(out / "predict_summary.json", summary)
    return result | {"predictions_csv": out / "predictions.csv"}
