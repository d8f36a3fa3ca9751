"""CPU speed of the training and inference step per backbone and execution mode.

For each backbone (the project's LandmarkRegressor: timm backbone + MLP head, 15 landmarks, random weights,
so no file is needed), times a training step (forward, wing loss, backward, AdamW step) and an inference
step (no grad) under every mode, and reports images/s and the ratio to fp32 NCHW measured in the same
run. Modes are timed in turns, `--repeats` rounds, and the median round is kept, so a drift in machine
load hits every mode alike.

Modes: fp32 NCHW (the baseline), fp32 channels_last, bf16 autocast NCHW, bf16 autocast channels_last,
and (with --compile) torch.compile on fp32 channels_last - the settings of `hardware.channels_last`,
`hardware.precision=bf16-mixed` and `hardware.compile=true`.

    python benchmarks/cpu_speed.py                            # the four backbones, batch 8, 224 px
    python benchmarks/cpu_speed.py --models resnet18 --steps 3 --repeats 1 --results /tmp/speed.json

Writes benchmarks/results/cpu_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import ROOT, machine, save_results, script_provenance
from studykit.losses import WingLoss
from studykit.models.landmark_module import LandmarkRegressor

RESULTS = ROOT / "benchmarks" / "results" / "cpu_speed.json"
MODELS = ["resnet18", "resnet50", "efficientnet_b0", "tf_efficientnet_lite0"]
MODES = {
    "fp32_nchw": {"channels_last": False, "bf16": False, "compile": False},
    "fp32_channels_last": {"channels_last": True, "bf16": False, "compile": False},
    "bf16_nchw": {"channels_last": False, "bf16": True, "compile": False},
    "bf16_channels_last": {"channels_last": True, "bf16": True, "compile": False},
    "compile_fp32_channels_last": {"channels_last": True, "bf16": False, "compile": True},
}
HEAD = {"type": "mlp", "hidden": [512, 256], "dropout": [0.1, 0.0, 0.0]}


def build(name: str, mode: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    net = LandmarkRegressor({"name": name, "pretrained": {"source": "none"}}, dict(HEAD), num_landmarks=15)
    if mode["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    if mode["compile"]:
        net.compile()
    return net


def batch(size: int, input_size: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, input_size, input_size, generator=gen)
    y = torch.rand(size, 15, 2, generator=gen)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class ModeTimer:
    """One backbone under one mode: its network, optimizer and batch, and timed rounds of steps."""

    def __init__(self, name: str, mode: dict, batch_size: int, input_size: int):
        self.mode = mode
        self.net = build(name, mode)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        self.loss = WingLoss()
        self.x, self.y = batch(batch_size, input_size, mode["channels_last"])
        self.infer_x, _ = batch(batch_size, input_size, mode["channels_last"])
        self.compile_seconds = 0.0

    def train_step(self) -> None:
        self.net.train()
        with autocast(self.mode["bf16"]):
            pred = self.net(self.x)
        loss = self.loss(pred.float() * 299, self.y * 299)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def infer_step(self) -> None:
        self.net.eval()
        with autocast(self.mode["bf16"]):
            self.net(self.infer_x)

    def warm_up(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step()
            self.infer_step()
        self.compile_seconds = time.perf_counter() - start if self.mode["compile"] else 0.0

    def time_round(self, steps: int) -> tuple[float, float]:
        """Seconds per training step and per inference step over `steps` steps each."""
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step()
        train = (time.perf_counter() - start) / steps
        start = time.perf_counter()
        for _ in range(steps):
            self.infer_step()
        return train, (time.perf_counter() - start) / steps


def bench_model(name: str, modes: list[str], batch_size: int, input_size: int, steps: int, repeats: int, warmup: int) -> dict:
    timers = {}
    for mode in modes:
        timers[mode] = ModeTimer(name, MODES[mode], batch_size, input_size)
        timers[mode].warm_up(warmup)
    rounds: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(repeats):
        for mode in modes:  # in turns: machine drift hits every mode alike
            rounds[mode].append(timers[mode].time_round(steps))
    out = {}
    for mode in modes:
        train_s = statistics.median(r[0] for r in rounds[mode])
        infer_s = statistics.median(r[1] for r in rounds[mode])
        out[mode] = {"train_images_per_s": batch_size / train_s, "inference_images_per_s": batch_size / infer_s,
                     "train_step_s": train_s, "inference_step_s": infer_s}
        if MODES[mode]["compile"]:
            out[mode]["compile_and_warmup_s"] = timers[mode].compile_seconds
    base = out["fp32_nchw"]
    for mode in modes:
        out[mode]["train_speedup"] = out[mode]["train_images_per_s"] / base["train_images_per_s"]
        out[mode]["inference_speedup"] = out[mode]["inference_images_per_s"] / base["inference_images_per_s"]
    out["fastest_train_mode"] = max(modes, key=lambda m: out[m]["train_images_per_s"])
    out["fastest_inference_mode"] = max(modes, key=lambda m: out[m]["inference_images_per_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)} (fp32_nchw is always run)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is kept")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    modes = ["fp32_nchw"] + [m for m in args.modes.split(",") if m != "fp32_nchw"]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    results = {
        "benchmark": "train step (forward, wing loss, backward, AdamW) and inference step, LandmarkRegressor with MLP head",
        "batch_size": args.batch_size, "input_size": args.input_size, "steps": args.steps, "repeats": args.repeats,
        "models": {},
        **script_provenance(),
    }
    for name in args.models.split(","):
        results["models"][name] = bench_model(name, modes, args.batch_size, args.input_size, args.steps, args.repeats, args.warmup)
        r = results["models"][name]
        print(name, {m: (round(r[m]["train_speedup"], 2), round(r[m]["inference_speedup"], 2)) for m in modes}, flush=True)
        results.update({"machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        save_results(args.results, results)


if __name__ == "__main__":
    main()
