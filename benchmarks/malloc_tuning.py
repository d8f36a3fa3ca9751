"""Training speed with and without the entry points' malloc tuning (studykit.utils.allocator).

Three measurements, each in fresh processes whose environment sets or omits the glibc tunables:
- `step`: the chest X-ray recipe's network (EfficientNet-Lite0 + heat-map head, composed from
  experiment=cxr_complete, random weights) timing training steps (forward, wing + heat-map loss, backward, AdamW)
  at its batch size, with the process's minor page faults and peak memory. Tuned and default alternate, `--rounds`
  times, so a drift in machine load hits both alike.
- `epochs` (`--epochs N`): real `train.py experiment=cxr_complete` runs of N epochs, default then tuned, per round;
  seconds per epoch from their train_summary.json.
- `main_job` (`--main-job`): `make train` (train.py experiment=cxr_refit) with the tuned allocator, its wall time
  and test error (plain and with its TTA), on this machine.

    python benchmarks/malloc_tuning.py --rounds 3 --epochs 3 [--main-job]
    python benchmarks/malloc_tuning.py --rounds 1 --steps 2 --results /tmp/malloc.json   # a quick check

Writes benchmarks/results/malloc_tuning.json (run folders under benchmarks/runs/malloc/; finished ones are reused).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, RUNS, landmark_network, machine, run_train, save_results, script_provenance
from studykit.utils.allocator import REEXECUTED, SWITCH, TUNABLES, tuned_environment

RESULTS = ROOT / "benchmarks" / "results" / "malloc_tuning.json"
RUN_ROOT = RUNS / "malloc"
MODES = ("default", "tuned")


def environment(mode: str) -> dict[str, str]:
    """This process's environment with the tunables as the entry points set them (tuned) or switched off (default)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", SWITCH, REEXECUTED)}
    if mode == "default":
        return {**env, SWITCH: "0"}
    tuned = tuned_environment(env)
    if tuned is None:
        raise SystemExit("the malloc tuning applies to Linux with glibc only: nothing to compare here")
    return tuned


def child_step(steps: int, warmup: int) -> None:
    """In the child: time the recipe's training step, print one JSON line."""
    import torch
    from hydra.utils import instantiate

    import studykit.config  # noqa: F401

    torch.manual_seed(0)
    net, cfg = landmark_network(["experiment=cxr_complete"])
    net = net.to(memory_format=torch.channels_last)
    loss_fn = instantiate(cfg.loss)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    size, batch = int(cfg.data.input_size), int(cfg.data.batch_size)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, 15, 2, generator=gen)

    def step() -> None:
        pred = net(x)
        loss = loss_fn(pred * 299, y * 299) + net.auxiliary_loss(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"step_s": seconds, "images_per_s": batch / seconds, "batch_size": batch, "input_size": size,
                      "minor_faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}))


def measure_steps(rounds: int, steps: int, warmup: int) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--child-step", "--steps", str(steps), "--warmup", str(warmup)],
                                 env=environment(mode), cwd=ROOT, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(mode, {k: round(v, 3) for k, v in runs[mode][-1].items() if isinstance(v, float)}, flush=True)
    summary = {mode: {"step_s_median": statistics.median(r["step_s"] for r in runs[mode]),
                      "minor_faults_per_step_median": statistics.median(r["minor_faults_per_step"] for r in runs[mode]),
                      "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs[mode]),
                      "runs": runs[mode]} for mode in MODES}
    summary["speedup"] = summary["default"]["step_s_median"] / summary["tuned"]["step_s_median"]
    return summary


def measure_epochs(rounds: int, epochs: int) -> dict:
    overrides = ["experiment=cxr_complete", f"phase.stages.finetune.epochs={epochs}", "seed=42"]
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in MODES:
            run = run_train(overrides, RUN_ROOT / f"cxr_complete-{epochs}ep-{mode}-r{r}", env=environment(mode))
            runs[mode].append({"seconds_per_epoch": run["seconds_per_epoch"], "wall_seconds": run["wall_seconds"],
                               "test_mean_px": run["report"]["mean_px"], "command": run["command"]})
            print(mode, r, round(run["seconds_per_epoch"], 1), "s per epoch", flush=True)
    summary = {mode: {"seconds_per_epoch_median": statistics.median(x["seconds_per_epoch"] for x in runs[mode]),
                      "runs": runs[mode]} for mode in MODES}
    summary["speedup"] = summary["default"]["seconds_per_epoch_median"] / summary["tuned"]["seconds_per_epoch_median"]
    summary["epochs"] = epochs
    return summary


def measure_main_job() -> dict:
    run_dir = RUN_ROOT / "main-job-tuned"
    run = run_train(["experiment=cxr_refit"], run_dir, env=environment("tuned"))
    tta_report = run_dir / "evaluation_tta" / "test_report.json"
    tta = json.loads(tta_report.read_text()) if tta_report.is_file() else {}
    return {"command": run["command"], "epochs": run["epochs"], "seconds_per_epoch": run["seconds_per_epoch"],
            "train_seconds": run["train_seconds"], "wall_seconds": run["wall_seconds"],
            "test_mean_px": run["report"]["mean_px"], "test_median_px": run["report"].get("median_px"),
            "test_tta_mean_px": tta.get("mean_px"), "test_tta_median_px": tta.get("median_px")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating default / tuned rounds")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per process")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0, help="> 0: also time real training runs of this many epochs")
    parser.add_argument("--main-job", action="store_true", help="also run the main job with the tuned allocator")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child-step", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_step:
        child_step(args.steps, args.warmup)
        return
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results.update({"benchmark": "glibc malloc tunables of the entry points (studykit.utils.allocator) against glibc's defaults",
                    "tunables": TUNABLES, **script_provenance(), "machine": machine()})

    def save(key: str, value: dict) -> None:
        results[key] = value
        results["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        save_results(args.results, results)

    save("step", {"rounds": args.rounds, "steps": args.steps, **measure_steps(args.rounds, args.steps, args.warmup)})
    print("step speedup", round(results["step"]["speedup"], 2), flush=True)
    if args.epochs > 0:
        save("epochs", measure_epochs(args.rounds, args.epochs))
        print("epoch speedup", round(results["epochs"]["speedup"], 2), flush=True)
    if args.main_job:
        save("main_job", measure_main_job())
        print("main job", results["main_job"], flush=True)


if __name__ == "__main__":
    main()
