"""`predict.py`: a trained run (or a seed ensemble) on images nobody labelled, for every task.

A generic loop: load the networks (torch, or the run's exported ONNX file with `engine=onnx`), guard the
outputs, and hand the input to the run's Task (`Task.predict_new`), which preprocesses each image as its run
was trained - read from the run's own resolved config - and writes predictions.csv. Unreadable files and
images without a face are rows with a status and a reason, never a crash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from studykit.evaluation.runner import load_trained_module, run_config, sweep_members
from studykit.inference.inputs import Net, PredictRequest, list_inputs
from studykit.tasks import task_of
from studykit.utils import trust
from studykit.utils.io import atomic_write_json, guard_outputs, make_dirs, protect

__all__ = ["OnnxNet", "list_inputs", "load_members", "predict"]


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
    # the run's Task preprocesses, predicts and writes predictions.csv: this loop knows no task by name
    result = task_of(run_cfg).predict_new(PredictRequest(cfg, run_cfg, nets, files, input_root, out, cache))
    summary = {k: v for k, v in result.items() if k != "predictions"}
    summary.update({"runs": [str(r) for r in runs], "engine": str(cfg.get("engine", "torch")), "tta": bool(cfg.tta),
                    "input": str(cfg.input), "predictions_csv": str(out / "predictions.csv")})
    atomic_write_json(out / "predict_summary.json", summary)
    return result | {"predictions_csv": out / "predictions.csv"}
