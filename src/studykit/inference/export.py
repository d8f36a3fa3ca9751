"""`export.py`: a trained run's network as an ONNX file, with the preprocessing constants beside it.

    <run>/export/model.onnx             input "image" (N, C, S, S) float32, normalized; output "output"
    <run>/export/preprocessing.json     what a user without the training stack needs to feed it

The batch dimension is dynamic. Opset 18 (the lowest torch's exporter implements): supported by onnxruntime's CPU provider.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from studykit.builders import normalization
from studykit.evaluation.runner import load_trained_module, run_config
from studykit.tasks import task_of
from studykit.utils.io import atomic_write_json, check_writable, file_mode, guard_outputs, make_dirs

OPSET = 18
def preprocessing_constants(cfg: DictConfig, in_chans: int) -> dict[str, Any]:
    """What a user without the training stack needs to feed the exported network: the input size, statistics
    and layout, and what the run's Task adds (names, the grey size and enhancement, the face pipeline)."""
    task = task_of(cfg)
    mean, std = normalization(cfg)
    return {
        "task": task.name, "input_size": int(cfg.data.input_size), "in_chans": in_chans,
        "mean": list(mean), "std": list(std), "output": task.output_description,
        "input_layout": "NCHW float32: pixel / 255, then (x - mean) / std per channel"
                        + ("; channel 4 is the landmark heat map / 255, not normalized" if in_chans == 4 else ""),
        **task.export_constants(cfg),
    }


def export_net(net: torch.nn.Module, in_chans: int, size: int, path: Path, opset: int = OPSET) -> Path:
    """`net` (input x: N x in_chans x size x size) as an ONNX file with a dynamic batch dimension."""
    example = torch.zeros(2, in_chans, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(net.eval(), (example,), dynamo=True, input_names=["image"], output_names=["output"],
                                dynamic_shapes={"x": {0: batch}}, opset_version=opset, verbose=False)
    tmp = check_writable(Path(path).with_suffix(".onnx.tmp"))
    program.save(str(tmp))
    os.chmod(tmp, file_mode())
    tmp.replace(path)  # atomic: a killed export leaves no half-written model
    return Path(path)


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None, opset: int = OPSET,
                data_root: str | Path | None = None) -> dict[str, Any]:
    """Write model.onnx and preprocessing.json for the run's best checkpoint; returns the constants. Nothing
    is written inside `data_root` (read-only)."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "export"
    guard_outputs(data_root, out)
    cfg = run_config(run_dir)
    module = load_trained_module(run_dir, cfg)
    module.use_channels_last(False)  # the graph's layout is onnxruntime's business
    net = module.net.eval()
    in_chans = int(OmegaConf.select(cfg, "task.module.in_chans", default=3) or 3)
    size = int(cfg.data.input_size)
    make_dirs(out)
    export_net(net, in_chans, size, out / "model.onnx", opset)
    constants = preprocessing_constants(cfg, in_chans)
    constants.update({"opset": opset, "run_dir": str(run_dir), "onnx": "model.onnx"})
    atomic_write_json(out / "preprocessing.json", constants)
    return constants
