"""FER+ label-distribution benchmark, tested on FER2013Test against the annotators' votes; writes
benchmarks/results/ferplus_distribution.json.

Losses: one network trained with each loss (mse, l1, kl) on the 8-emotion vote distributions: one object per
loss (kl, tvd, emd, accuracy, ...) and seconds per epoch.
Schemes (the FER+ paper's comparison): the same network and loss (cross-entropy) trained on the majority label,
on the vote distribution, and on a label drawn from the votes at every access, with several seeds: per scheme
every metric as mean +- std over seeds, and paired tests over the test images between the best two schemes
(per-image KL and per-image correctness of the majority class, each averaged over the seeds). Runs finished
earlier are reused, a stopped one resumes from its last checkpoint.

    python benchmarks/ferplus_distribution.py                  # the three losses, experiment defaults
    python benchmarks/ferplus_distribution.py --losses kl --model efficientnet_lite0
    python benchmarks/ferplus_distribution.py --schemes majority,distribution,sample --seeds 1,2
    python benchmarks/ferplus_distribution.py --quick          # a tiny subset: checks the script only
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import ROOT, RUNS, load_results, machine, run_train, save_results

from studykit.evaluation.runner import read_per_sample
from studykit.evaluation.stats import mean_std, paired_test

RESULTS = ROOT / "benchmarks" / "results" / "ferplus_distribution.json"
QUICK = ["data.prepare.limit_per_split={train:256,val:64,test:64}", "trainer.max_epochs=1", "data.input_size=48"]


METRICS = ("kl", "tvd", "emd", "accuracy", "mse", "cross_entropy")


def per_image_correct(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """1 where the predicted class is the votes' majority class, per test image (from test_predictions.csv)."""
    with open(run_dir / "test_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pred = [k for k in rows[0] if k.startswith("pred_")]
    votes = [k for k in rows[0] if k.startswith("votes_")]
    correct = [float(np.argmax([float(r[k]) for k in pred]) == np.argmax([float(r[k]) for k in votes])) for r in rows]
    return [r["image_id"] for r in rows], np.asarray(correct)


def compare_schemes(args) -> None:
    results = load_results(args.results, {"models": {}})
    section = results.setdefault("schemes", {})
    seeds = [int(x) for x in args.seeds.split(",")]
    per_image: dict[str, dict[str, np.ndarray]] = {}
    for scheme in args.schemes.split(","):
        runs = {}
        for seed in seeds:
            name = f"ferplus-scheme-{args.model}-{scheme}"
            run_dir = RUNS / ("quick-" + name if args.quick else name) / f"seed{seed}"
            run = run_train(["experiment=ferplus_distribution", f"model={args.model}", "loss=ce", f"data.train_target={scheme}",
                             f"seed={seed}", *(QUICK if args.quick else []), *args.extra], run_dir)
            runs[seed] = (run_dir, run)
            print(f"{scheme} seed {seed}: KL {run['report']['kl']:.4f} acc {run['report']['accuracy']:.4f}", flush=True)
        reports = {seed: run["report"] for seed, (_, run) in runs.items()}
        section[scheme] = {
            "seeds": {str(seed): {**{k: r[k] for k in METRICS}, "epochs": runs[seed][1]["epochs"],
                                  "seconds_per_epoch": runs[seed][1]["seconds_per_epoch"], "command": runs[seed][1]["command"]}
                      for seed, r in reports.items()},
            **{k: mean_std(r[k] for r in reports.values()) for k in METRICS},
            "model": args.model, "loss": "ce", "train_target": scheme, "quick": args.quick,
        }
        kl = [read_per_sample(run_dir / "test_per_sample.csv") for run_dir, _ in runs.values()]
        correct = [per_image_correct(run_dir) for run_dir, _ in runs.values()]
        if any(ids != kl[0][0] for ids, _ in kl + correct):
            raise ValueError(f"the {scheme} runs were tested on different images")
        per_image[scheme] = {"kl": np.mean([v for _, v in kl], axis=0), "correct": np.mean([v for _, v in correct], axis=0)}
    done = {k: v for k, v in section.items() if k in per_image}
    if len(done) >= 2:
        a, b = sorted(done, key=lambda k: -done[k]["accuracy"]["mean"])[:2]
        results["schemes_paired_tests"] = {
            "best_two_by_accuracy": [a, b],
            "per_image_kl": paired_test(per_image[a]["kl"], per_image[b]["kl"], (a, b)),
            "per_image_correct": paired_test(per_image[a]["correct"], per_image[b]["correct"], (a, b)),
        }
    results.update({"schemes_seeds": seeds, "machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_results(args.results, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default="mse,l1,kl")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--seed", type=int, default=42, help="the seed of the loss runs")
    parser.add_argument("--schemes", default="", help="e.g. majority,distribution,sample: the training-scheme comparison")
    parser.add_argument("--seeds", default="1,2", help="seeds of every scheme")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.schemes:
        compare_schemes(args)
        return

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
