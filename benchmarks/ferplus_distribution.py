"""FER+ label-distribution benchmark, tested on FER2013Test against the annotators' votes; writes
benchmarks/results/ferplus_distribution.json.

Losses: one network trained with each loss (mse, l1, kl) on the 8-emotion vote distributions: per loss
(kl, tvd, emd, accuracy, ...) over the seeds, and seconds per epoch.
Schemes (the FER+ paper's comparison): the same network trained on the majority label (cross-entropy), on the
vote distribution (KL(votes || p): the same gradients as the paper's cross-entropy on the votes, which differs
from it by the votes' constant entropy), and on a label drawn from the votes at every access (cross-entropy),
with several seeds: per scheme every metric as mean +- std over seeds, and paired tests over the test images
between the best two schemes (per-image KL and per-image correctness of the majority class, each averaged over
the seeds).

Every run is one (experiment, loss, training target, seed) under benchmarks/runs/ferplus-dist/, so the
distribution scheme's runs are the KL runs of the loss comparison too. Runs finished earlier are reused, a
stopped one resumes from its last checkpoint; extra Hydra overrides are not part of the run's name unless
--variant names them: keep them the same across calls that share runs.

    python benchmarks/ferplus_distribution.py                  # the three losses on experiment=ferplus_distribution
    python benchmarks/ferplus_distribution.py --losses kl --seeds 1,2
    python benchmarks/ferplus_distribution.py --schemes majority,distribution,sample --seeds 1,2
    python benchmarks/ferplus_distribution.py --losses kl --variant 48px data.input_size=48
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
SCHEME_LOSS = {"majority": "ce", "distribution": "kl", "sample": "ce"}


def train_one(args, loss: str, target: str, seed: int) -> tuple[Path, dict]:
    """One (experiment, loss, training target, seed) run, trained or reused."""
    name = f"{model_key(args)}-{loss}-{target}-seed{seed}"
    run_dir = RUNS / ("quick-ferplus-dist" if args.quick else "ferplus-dist") / name
    run = run_train([f"experiment={args.experiment}", f"loss={loss}", f"data.train_target={target}",
                     f"seed={seed}", *(QUICK if args.quick else []), *args.extra], run_dir)
    print(f"{name}: KL {run['report']['kl']:.4f} TVD {run['report']['tvd']:.4f} EMD {run['report']['emd']:.4f} "
          f"acc {run['report']['accuracy']:.4f}", flush=True)
    return run_dir, run


def model_key(args) -> str:
    """The recipe's name in run folders and in the JSON's `models`: the experiment, and --variant's extra overrides."""
    return f"{args.experiment}-{args.variant}" if args.variant else args.experiment


def over_seeds(runs: dict[int, dict]) -> dict:
    """Per seed: the metrics, epochs, s/epoch and command; then every metric as mean +- std over the seeds."""
    return {
        "seeds": {str(seed): {**{k: run["report"][k] for k in METRICS}, "epochs": run["epochs"],
                              "seconds_per_epoch": run["seconds_per_epoch"], "command": run["command"]}
                  for seed, run in runs.items()},
        **{k: mean_std(run["report"][k] for run in runs.values()) for k in METRICS},
    }


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
        if scheme not in SCHEME_LOSS:
            raise SystemExit(f"unknown scheme {scheme!r}; choose from {sorted(SCHEME_LOSS)}")
        runs = {seed: train_one(args, SCHEME_LOSS[scheme], scheme, seed) for seed in seeds}
        section[scheme] = {**over_seeds({seed: run for seed, (_, run) in runs.items()}),
                           "experiment": args.experiment, "loss": SCHEME_LOSS[scheme], "train_target": scheme, "quick": args.quick}
        kl = [read_per_sample(run_dir / "test_per_sample.csv") for run_dir, _ in runs.values()]
        correct = [per_image_correct(run_dir) for run_dir, _ in runs.values()]
        if any(ids != kl[0][0] for ids, _ in kl + correct):
            raise ValueError(f"the {scheme} runs were tested on different images")
        per_image[scheme] = {"kl": np.mean([v for _, v in kl], axis=0), "correct": np.mean([v for _, v in correct], axis=0)}
        save_results(args.results, results)  # a chain stopped later keeps this scheme

    def paired(a: str, b: str) -> dict:
        return {"per_image_kl": paired_test(per_image[a]["kl"], per_image[b]["kl"], (a, b)),
                "per_image_correct": paired_test(per_image[a]["correct"], per_image[b]["correct"], (a, b))}

    done = {k: v for k, v in section.items() if k in per_image}
    if len(done) >= 2:
        a, b = sorted(done, key=lambda k: -done[k]["accuracy"]["mean"])[:2]
        results["schemes_paired_tests"] = {"best_two_by_accuracy": [a, b], **paired(a, b)}
        # the paper's question: does learning from the votes beat learning the majority label?
        results["schemes_paired_vs_majority"] = {k: paired(k, "majority") for k in done if k != "majority" and "majority" in done}
    results.update({"schemes_seeds": seeds, "machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_results(args.results, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--losses", default="mse,l1,kl")
    parser.add_argument("--experiment", default="ferplus_distribution", help="the experiment every run starts from")
    parser.add_argument("--schemes", default="", help="e.g. majority,distribution,sample: the training-scheme comparison")
    parser.add_argument("--seeds", default="1", help="seeds of every loss or scheme, e.g. 1,2")
    parser.add_argument("--variant", default="", help="names a recipe (the extra overrides) in run folders and the JSON")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    if args.schemes:
        compare_schemes(args)
        return

    results = load_results(args.results, {"models": {}})
    seeds = [int(x) for x in args.seeds.split(",")]
    for loss in args.losses.split(","):
        runs = {seed: train_one(args, loss, "distribution", seed)[1] for seed in seeds}
        results["models"].setdefault(model_key(args), {})[loss] = {
            **over_seeds(runs), "n_samples": next(iter(runs.values()))["report"]["n_samples"],
            "pretrained": next(iter(runs.values()))["pretrained"], "quick": args.quick, "overrides": args.extra,
        }
        results.update({
            "benchmark": "FER+ label-distribution learning: 8 emotions, votes of 10 annotators, FER2013Test",
            "emd_ground_distance": "|i - j| between class positions in the order neutral, happiness, surprise, sadness, anger, "
                                   "disgust, fear, contempt",
            "loss_seeds": seeds, "machine": machine(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        save_results(args.results, results)


if __name__ == "__main__":
    main()
