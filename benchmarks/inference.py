"""Inference speed of the CXR main model and a FER+ expression model on this CPU.

Each model is built from its experiment's composed config (weights from a finished run with --cxr-run /
--fer-run, else as the config initializes them: speed does not depend on the values) and timed under
torch eager NCHW (the baseline), torch channels_last, torch channels_last + bf16 autocast, and onnxruntime
(the file export.py writes), at batch 1 and batch 32: images/s and latency per image, as ratios to the
baseline measured in the same run. Paths are timed in turns over `--repeats` rounds; the median is kept.

    python benchmarks/inference.py                      # -> benchmarks/results/inference.json
    python benchmarks/inference.py --repeats 1 --seconds 0.5 --results /tmp/inference.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import studykit.config  # noqa: F401  (resolvers)
from common import DATA_ROOT, ROOT, machine, save_results
from studykit.builders import build_module
from studykit.evaluation.runner import load_trained_module, run_config
from studykit.inference.export import export_net
from studykit.inference.predict import OnnxNet

RESULTS = ROOT / "benchmarks" / "results" / "inference.json"
MODELS = {
    # name: (overrides, classes filled in as train.py fills them from the data)
    "cxr_main": (["experiment=cxr_complete"], {"num_landmarks": 15, "categories": ["COVID", "Normal", "Viral_Pneumonia"]}),
    "ferplus_expression": (["experiment=ferplus_expression", "model=resnet18"],
                           {"num_classes": 8, "in_chans": 3,
                            "classes": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]}),
}
PATHS = ["torch_nchw", "torch_channels_last", "torch_channels_last_bf16", "onnxruntime"]


def composed(overrides: list[str], filled: dict):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_root = DATA_ROOT
        for key, value in filled.items():
            cfg.task.module[key] = value
        cfg.hardware.channels_last = False
    return cfg


def load(name: str, run_dir: Path | None):
    overrides, filled = MODELS[name]
    cfg = run_config(run_dir) if run_dir else composed(overrides, filled)
    with open_dict(cfg):
        cfg.hardware.channels_last = False
    module = load_trained_module(run_dir, cfg) if run_dir else build_module(cfg).eval()
    in_chans = int(cfg.task.module.get("in_chans", 3) or 3)
    return module.net, in_chans, int(cfg.data.input_size), ("run " + str(run_dir)) if run_dir else "experiment config"


def timer(fn, x: torch.Tensor, seconds: float) -> float:
    """Seconds per call, over at least `seconds` of calls (after one warm-up call)."""
    fn(x)
    calls, start = 0, time.perf_counter()
    while True:
        fn(x)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return elapsed / calls


def bench(name: str, run_dir: Path | None, batches: list[int], repeats: int, seconds: float, threads: int) -> dict:
    net, in_chans, size, weights = load(name, run_dir)
    nchw = net
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)  # both layouts live, timed in turns
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_net(copy.deepcopy(net), in_chans, size, Path(tmp) / f"{name}.onnx")
        ort = OnnxNet(onnx_file, threads=threads)

        def run_torch(model, bf16: bool, layout):
            def call(x):
                with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()):
                    return model(x.contiguous(memory_format=layout))
            return call

        fns = {"torch_nchw": run_torch(nchw, False, torch.contiguous_format),
               "torch_channels_last": run_torch(cl, False, torch.channels_last),
               "torch_channels_last_bf16": run_torch(cl, True, torch.channels_last),
               "onnxruntime": ort}
        out = {"input": [in_chans, size, size], "weights": weights, "batches": {}}
        for batch in batches:
            x = torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(0))
            rounds = {p: [] for p in PATHS}
            for _ in range(repeats):
                for path in PATHS:  # in turns: drift in machine load hits every path alike
                    rounds[path].append(timer(fns[path], x, seconds))
            per_call = {p: statistics.median(v) for p, v in rounds.items()}
            rows = {p: {"images_per_s": batch / s, "latency_ms_per_image": 1000 * s / batch, "latency_ms_per_batch": 1000 * s,
                        "speedup_vs_torch_nchw": per_call["torch_nchw"] / s} for p, s in per_call.items()}
            out["batches"][str(batch)] = {"paths": rows, "fastest": max(rows, key=lambda p: rows[p]["images_per_s"])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cxr-run", type=Path, default=None, help="a finished cxr_complete run folder (its weights)")
    parser.add_argument("--fer-run", type=Path, default=None, help="a finished ferplus_expression run folder")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per path, batch and round")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    batches = [int(b) for b in args.batches.split(",")]
    results = {"benchmark": "inference images/s and latency per image; ratios to torch eager NCHW measured in the same run",
               "threads": threads, "repeats": args.repeats, "models": {}}
    for name, run in (("cxr_main", args.cxr_run), ("ferplus_expression", args.fer_run)):
        results["models"][name] = bench(name, run, batches, args.repeats, args.seconds, threads)
        b1 = results["models"][name]["batches"][str(batches[0])]
        print(name, {p: round(v["speedup_vs_torch_nchw"], 2) for p, v in b1["paths"].items()}, flush=True)
    first = str(batches[0])
    results["fastest_speedup_batch1"] = {n: m["batches"][first]["paths"][m["batches"][first]["fastest"]]["speedup_vs_torch_nchw"]
                                         for n, m in results["models"].items()}
    results.update({"machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_results(args.results, results)


if __name__ == "__main__":
    main()
