"""Shared by the benchmark scripts: run train.py as a subprocess and collect what it wrote."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from studykit.utils.run_info import git_state

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs"
# the data sets: $STUDYKIT_DATA_ROOT, else ../shared/data beside the checkout (as conf/paths/default.yaml)
DATA_ROOT = os.environ.get("STUDYKIT_DATA_ROOT", str(ROOT.parent / "shared" / "data"))
# --quick for the landmark benchmarks: the cxr_smoke experiment's settings, applied on top of any configuration
CXR_QUICK = ["data.prepare.image_size=96", "data.prepare.limit_per_split={train:16,val:8,test:8}", "data.input_size=64",
             "data.batch_size=4", "trainer.max_epochs=1"]


# the instruction sets that decide CPU speed here: AMX and AVX-512 (BF16) make the Intel machines 2-4x faster per
# epoch than an AVX2-only AMD EPYC
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and which of CPU_FLAGS it has, from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", ""), "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def machine() -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), **cpu_model(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            # malloc settings change speed (studykit.utils.allocator): train.py sets them, an in-process benchmark may not
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def landmark_network(overrides: list[str]):
    """The landmark network that `overrides` compose (random weights, nothing downloaded) and the composed config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from studykit.models.landmark_module import LandmarkRegressor

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=overrides)
    backbone = {**OmegaConf.to_container(cfg.model.backbone, resolve=True), "pretrained": {"source": "none"}}
    net = LandmarkRegressor(backbone, OmegaConf.to_container(cfg.model.head, resolve=True), num_landmarks=15,
                            coord_attention=cfg.model.coord_attention)
    return net, cfg


def run_train(overrides: list[str], run_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Train and test one configuration; returns its test report, train summary, command and timings.

    Resumable: a run folder that already holds its test report is read, not retrained; one that a stopped
    run left with a last.ckpt resumes from it (the newest stage's), so a benchmark chain killed mid-way
    loses at most one epoch. `env`: the subprocess's environment (default: this process's)."""
    cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}", "callbacks.progress=null"]
    start = time.perf_counter()
    if (run_dir / "test_report.json").is_file() and (run_dir / "train_summary.json").is_file():
        print("reused", run_dir, flush=True)
    else:
        last = sorted((run_dir / "checkpoints").glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
        resume = [f"ckpt_path={last[-1]}"] if last else []
        print("+", " ".join(cmd + resume), flush=True)
        subprocess.run(cmd + resume, cwd=ROOT, check=True, env=env)
    wall = time.perf_counter() - start
    summary = json.loads((run_dir / "train_summary.json").read_text())
    epochs = sum(s["epochs_run"] for s in summary["stages"].values())
    train_seconds = sum(s["seconds"] for s in summary["stages"].values())
    return {
        "command": "python " + " ".join(cmd[1:]),
        "pretrained": pretrained_source(run_dir),
        "report": json.loads((run_dir / "test_report.json").read_text()),
        "summary": summary,
        "epochs": epochs,
        "seconds_per_epoch": train_seconds / max(1, epochs),
        "train_seconds": train_seconds,
        "wall_seconds": wall,
    }


def pretrained_source(run_dir: Path) -> str:
    """Where the run's backbone weights came from (model.backbone.pretrained.source: none, hub, file, package)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(run_dir) / "config_resolved.yaml")
    return str(OmegaConf.select(cfg, "model.backbone.pretrained.source", default="unknown"))


def load_results(path: Path, empty: dict[str, Any]) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else empty


def script_provenance() -> dict[str, str]:
    """What a benchmark script's results record of how they were made: its command line and the code's commit."""
    return {"command": "python " + " ".join(sys.argv), "code_commit": (git_state(ROOT).get("commit") or "")[:7]}


def save_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
