"""FER+ label-distribution benchmark: ResNet-18 trained with each loss (mse, l1, kl) on the 8-emotion vote
distributions, tested on FER2013Test; writes benchmarks/results/ferplus_distribution.json with one object per
loss (kl, tvd, emd, accuracy, ...) and seconds per epoch.

    python benchmarks/ferplus_distribution.py                  # the three losses, experiment defaults
    python benchmarks/ferplus_distribution.py --losses kl --model efficientnet_lite0
    python benchmarks/ferplus_distribution.py --quick          # a tiny subset: checks the script only
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, RUNS, load_results, machine, run_train, save_results

RESULTS = ROOT / "benchmarks" / "results" / "ferplus_distribution.json"
QUICK = ["data.prepare.limit_per_split={train:256,val:64,test:64}", "trainer.max_epochs=1", "data.input_size=48"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default="mse,l1,kl")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    results = load_results(args.results, {"models": {}})
    for loss in args.losses.split(","):
        name = f"ferplus-{args.model}-{loss}"
        run = run_train(["experiment=ferplus_distribution", f"model={args.model}", f"loss={loss}", f"seed={args.seed}",
                         *(QUICK if args.quick else []), *args.extra], RUNS / (f"quick-{name}" if args.quick else name))
        report = run["report"]
        results["models"].setdefault(args.model, {})[loss] = {
            **{k: report[k] for k in ("kl", "tvd", "emd", "accuracy", "mse", "cross_entropy", "n_samples")},
            "epochs": run["epochs"], "seconds_per_epoch": run["seconds_per_epoch"], "command": run["command"],
            "pretrained": run["pretrained"],
            "quick": args.quick,
        }
        results.update({
            "benchmark": "FER+ label-distribution learning: 8 emotions, votes of 10 annotators, FER2013Test",
            "emd_ground_distance": "|i - j| between class positions in the order neutral, happiness, surprise, sadness, anger, disgust, fear, contempt",
            "seed": args.seed, "machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        # the shape: one object per loss for resnet18
        if args.model == "resnet18":
            results.update({loss_name: values for loss_name, values in results["models"]["resnet18"].items()})
        save_results(args.results, results)
        print(f"{name}: KL {report['kl']:.4f} TVD {report['tvd']:.4f} EMD {report['emd']:.4f} acc {report['accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
