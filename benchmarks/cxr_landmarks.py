"""Chest X-ray landmark regression: the main job, the seed protocol and the recipe search.

Runs `train.py experiment=cxr/<name>` for each named experiment (conf/experiment/cxr/; seed 42 by default) and
merges the test reports into benchmarks/results/cxr_landmarks.json. Configurations already in the results file
are kept, finished run folders are reused and a stopped run resumes from its last checkpoint, so the benchmark
can be run one configuration at a time (--configs) and resumed after an interruption.

The main job's recipe is chosen among the `main-*` configurations by *validation* mean error (the best
epoch's val/mean_px); their test errors are reported, never used to choose. The main job then refits the chosen
recipe on train + val (`refit-<recipe>`, experiment=cxr_refit), where that run exists.

    python benchmarks/cxr_landmarks.py --configs main-lite0-mlp,main-lite0-heatmap
    python benchmarks/cxr_landmarks.py --configs screen30-base --as screen30-base-amd   # a control on another machine
    python benchmarks/cxr_landmarks.py --quick               # tiny subset, 1 epoch (checks the script only)
    python benchmarks/cxr_landmarks.py --merge ../wt/benchmarks/results/cxr_landmarks.json   # results of a worktree's chain
    python benchmarks/cxr_landmarks.py --tta --configs screen30-base   # TTA figures missing from a finished run

Every run is also scored with TTA (test, and validation where it was held out): flip alone, and flip with the input
shifted by 0 and +-4, 8 or 12 px along x and y (data.tta_shift_px); the main job's figures use the variant that
lowered the validation error most on average over the runs that measured every variant, if any lowered it.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import CXR_QUICK, ROOT, RUNS, landmark_network, load_results, machine, run_train, save_results
from studykit.evaluation.runner import evaluate_single
from studykit.evaluation.stats import mean_std

RESULTS = ROOT / "benchmarks" / "results" / "cxr_landmarks.json"

# every configuration compared is an experiment config under conf/experiment/cxr/ (runnable alone:
# python train.py experiment=cxr/<name>); its results key is its name (other seeds: <name>-s<seed>)
EXPERIMENTS = ROOT / "conf" / "experiment" / "cxr"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def experiment_overrides(name: str) -> list[str]:
    return [f"experiment=cxr/{name}"]


# shift TTA (data.tta_shift_px): the sizes scored on every run, beside flip TTA alone; the recipe's size is chosen
# on validation (summarize) and set in experiment=cxr_complete
TTA_SHIFTS = (4, 8, 12)


def tta_key(shift_px: int) -> str:
    """The results' keys of a TTA variant: test_tta_mean_px (flip), test_tta_shift8_mean_px (flip + shifts of 8 px)."""
    return "tta" if shift_px == 0 else f"tta_shift{shift_px}"


def tta_figures(run_dir: Path, validated: bool, have: dict | None = None) -> dict:
    """The run's tested weights with flip TTA, alone (shift 0) and with each shift size (evaluate.py's code): test,
    and validation where it was held out. Variants already in `have` are not scored again."""
    out = {}
    for shift in (0, *TTA_SHIFTS):
        key = tta_key(shift)
        if have and f"test_{key}_mean_px" in have and (not validated or f"val_{key}_mean_px" in have):
            continue
        # explicit: a run's config may set a shift; flip alone gets its own folder, as evaluation_tta/ is where
        # train.py and evaluate.py write the TTA of the run's own config
        overrides = [f"data.tta_shift_px={shift}"]
        folder = f"{key}_flip" if shift == 0 else key
        test = evaluate_single(run_dir, tta=True, out_dir=run_dir / f"evaluation_{folder}", overrides=overrides)
        out.update({f"test_{key}_mean_px": test["mean_px"], f"test_{key}_median_px": test["median_px"],
                    f"per_category_{key}_mean_px": {k: v["mean_px"] for k, v in test["per_category"].items()}})
        if validated:
            val = evaluate_single(run_dir, tta=True, split="val", out_dir=run_dir / f"evaluation_val_{folder}", overrides=overrides)
            out[f"val_{key}_mean_px"] = val["mean_px"]
    return out


DEFAULT_SEED = 42


def entry_name(name: str, seed: int) -> str:
    """A configuration's key in the results and its run folder: other seeds than 42 get a suffix."""
    return name if seed == DEFAULT_SEED else f"{name}-s{seed}"


def run_config(name: str, key: str, seed: int, quick: bool, extra: list[str]) -> dict:
    overrides = experiment_overrides(name)
    run_dir = RUNS / (f"quick-{key}" if quick else key)
    run = run_train([*overrides, f"seed={seed}", *(CXR_QUICK if quick else []), *extra], run_dir)
    report, summary = run["report"], run["summary"]
    val_mean_px = list(summary["stages"].values())[-1]["best_score"]
    return {
        "experiment": f"cxr/{name}",
        "command": run["command"],
        "pretrained": run["pretrained"],  # model.backbone.pretrained.source of the run: none, hub, file, package
        "seed": seed,
        "val_mean_px": val_mean_px,
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
        "machine": machine(),  # seconds per epoch differ 2-4x between CPUs
        "code_commit": json.loads((run_dir / "run_info.json").read_text())["git"]["commit"][:7],
        "quick": quick,
        **tta_figures(run_dir, validated=val_mean_px is not None),
    }


# a costlier configuration must beat the cheaper ones on validation by more than this to replace them: one seed
# moves a run's validation error by about 0.1 px (the 45-epoch recipe's 5 seeds: 7.04-7.30, std 0.10)
COSTLIER_MARGIN_PX = 0.05


# the network whose epoch is the unit of training cost: the recipe's (Lite0 + heat-map head, 224 px)
REFERENCE = ["experiment=cxr_complete"]


def forward_gflops(overrides: list[str]) -> float:
    """GFLOPs of one image's forward pass through the network that `overrides` compose, at its input size (torch's
    FlopCounterMode, random weights): a training step's cost up to a constant, on any machine."""
    net, cfg = landmark_network(overrides)
    net.eval()
    size = int(cfg.data.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


# what a recorded train.py command sets about where and how it ran, not what it trains
RUN_ONLY = ("hydra.", "callbacks.progress=", "seed=", "ckpt_path=")


def config_overrides(command: str) -> list[str]:
    """The Hydra overrides of a recorded `python train.py ...` command that decide what is trained."""
    return [arg for arg in shlex.split(command)[2:] if not arg.startswith(RUN_ONLY)]


def configuration_name(key: str, entry: dict) -> str:
    """The configuration of a results entry: its key less the seed suffix (entry_name)."""
    seed = entry.get("seed", DEFAULT_SEED)
    return key.removesuffix(f"-s{seed}") if seed != DEFAULT_SEED else key


def training_cost(entry: dict, reference_gflops: float) -> float:
    """A run's training cost in epochs of the reference network (Lite0 + heat-map head at 224 px): its scheduled
    epochs x its forward GFLOPs per image (`forward_gflops`) / the reference's (early stopping aside: the refit, which
    validates nothing, runs them all)."""
    found = re.search(r"phase\.stages\.finetune\.epochs=(\d+)", entry["command"])
    epochs = int(found.group(1)) if found else sum(s["epochs_run"] for s in entry["stages"].values())
    return epochs * entry["forward_gflops"] / reference_gflops


def choose_recipe(pool: dict, reference_gflops: float) -> str:
    """The configuration with the best validation mean px, unless it costs more to train than others and does not
    beat the best of those by more than COSTLIER_MARGIN_PX: then that cheaper one (and the same test again)."""
    best = min(pool, key=lambda k: pool[k]["val_mean_px"])
    cost = {k: training_cost(v, reference_gflops) for k, v in pool.items()}
    while True:
        cheaper = {k: v for k, v in pool.items() if cost[k] < cost[best]}
        if not cheaper:
            return best
        best_cheaper = min(cheaper, key=lambda k: cheaper[k]["val_mean_px"])
        if pool[best]["val_mean_px"] < pool[best_cheaper]["val_mean_px"] - COSTLIER_MARGIN_PX:
            return best
        best = best_cheaper


def seed_spread(entries: dict, tta: str | None) -> dict:
    """Test mean px (plain and with the chosen TTA) of one configuration's seeds: each, and mean +- std (the
    evaluation code's own aggregation, as `evaluate.py sweep=`)."""
    keys = ("test_mean_px", *([f"test_{tta}_mean_px"] if tta else []))
    out = {"seeds": {str(v.get("seed", DEFAULT_SEED)): {k: v.get(k) for k in keys} for v in entries.values()}}
    for key in keys:
        values = [v[key] for v in entries.values() if v.get(key) is not None]
        out[key] = mean_std(values) if values else None
    return out


def by_configuration(entries: dict) -> dict:
    """The entries grouped by configuration (<name> and its other seeds <name>-s<k>), each with its validation mean
    px averaged over its seeds: a seed is not a configuration to choose, and its refit shares only the recipe."""
    groups: dict[str, list[dict]] = {}
    for key, entry in entries.items():
        groups.setdefault(configuration_name(key, entry), []).append(entry)
    return {name: {**group[0], "val_mean_px": mean_std(e["val_mean_px"] for e in group)["mean"], "val_seeds": len(group)}
            for name, group in groups.items()}


def summarize(results: dict, seed: int, quick: bool) -> None:
    """The headline: the main-* configuration with the best validation error (never chosen on test)."""
    done = {k: v for k, v in results["configurations"].items() if v.get("quick") == quick}
    # refit-* runs trained on the validation split: they have no validation error to be chosen by
    validated = {k: v for k, v in done.items() if v.get("val_mean_px") is not None}
    candidates = {k: v for k, v in validated.items() if k.startswith("main-")} or validated
    for key, entry in candidates.items():
        # counted once, kept in the results; from the configuration's experiment where it has one (a recorded command
        # may predate what its experiment now sets)
        if "forward_gflops" not in entry:
            name = configuration_name(key, entry)
            entry["forward_gflops"] = forward_gflops(experiment_overrides(name) if name in experiment_names()
                                                     else config_overrides(entry["command"]))
    reference_gflops = forward_gflops(REFERENCE)
    pool = by_configuration(candidates)
    # more epochs, a larger input or a larger network must keep the refit within 45 minutes and buy more than a
    # seed's noise
    best = choose_recipe(pool, reference_gflops)
    # the chosen recipe refit on train + val, where it ran, is the main job
    main = f"refit-{best}" if f"refit-{best}" in done else best
    # TTA: the variant (flip alone, or flip + shifts of one size) that lowered the validation error most on average
    # over the runs that measured every variant, where it lowered it at all
    variants = [tta_key(shift) for shift in (0, *TTA_SHIFTS)]
    measured = [v for v in validated.values() if all(f"val_{key}_mean_px" in v for key in variants)]
    changes = {key: mean(v[f"val_{key}_mean_px"] - v["val_mean_px"] for v in measured) for key in variants} if measured else {}
    choice = min(changes, key=changes.get) if changes else None
    tta = choice is not None and changes[choice] < 0 and f"test_{choice}_mean_px" in done[main]
    suffix = f"_{choice}" if tta else ""
    results.update({
        "benchmark": "cxr_landmarks: 15 landmarks, test split of 144 images, errors in pixels of the 299x299 original",
        "protocol": "main job: experiment=cxr_refit; the cxr_complete recipe chosen among the main-* configurations by validation mean "
                    f"px, averaged over each configuration's seeds (a configuration that costs more to train - epochs x forward GFLOPs per image / "
                    f"those of {' '.join(REFERENCE)} - must beat the best cheaper one by "
                    f"more than {COSTLIER_MARGIN_PX} px), "
                    "then refit on train + val (refit-<recipe>) where that run exists",
        "seed": seed,
        "best_configuration": best,
        "main_job_configuration": main,
        "val_mean_px": pool[best]["val_mean_px"],  # the mean over the configuration's seeds (val_seeds of them)
        "val_seeds": pool[best]["val_seeds"],
        "reference_gflops": reference_gflops,
        "tta": choice if tta else None,
        "tta_choice": {"rule": f"the TTA variant (flip alone, or flip + shifts of one of {list(TTA_SHIFTS)} input px) with the lowest mean "
                               "change of the validation mean px over the runs that measured every variant, if below 0",
                       "runs": len(measured), "mean_val_change_px": changes},
        "test_mean_px": done[main][f"test{suffix}_mean_px"],
        "test_median_px": done[main][f"test{suffix}_median_px"],
        "test_mean_px_without_tta": done[main]["test_mean_px"],
        # the main job's configuration over every seed that ran (<main>, <main>-s<k>)
        "main_job_seeds": seed_spread({k: v for k, v in done.items() if k == main or re.fullmatch(rf"{re.escape(main)}-s\d+", k)},
                                      choice if tta else None),
        "per_category_mean_px": done[main][f"per_category{suffix}_mean_px"],
        "seconds_per_epoch": done[main]["seconds_per_epoch"],
        "peak_memory_mb": done[main]["peak_memory_mb"],
        "machine": machine(),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "references_px": {"seed_project_resnet18_imagenet_complete": 8.13, "seed_project_mse": 11.34,
                          "best_public_ensemble4_tta": 3.71, "best_public_single_tta": 4.04},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(experiment_names()),
                        help="comma-separated experiment names of conf/experiment/cxr/ (default: all)")
    parser.add_argument("--as", dest="key", default=None,
                        help="store the (single) configuration under this results key, e.g. a control rerun on another machine")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="other seeds than 42 are kept as <configuration>-s<seed>")
    parser.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch per phase: checks the script, not the model")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--tta", action="store_true",
                        help="only add the TTA figures missing from the --configs' finished runs (measured before they were scored)")
    parser.add_argument("--merge", nargs="+", type=Path, default=[],
                        help="merge the configurations of these results files (e.g. a worktree's) and re-derive the headline")
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides passed to every run")
    args = parser.parse_args()

    results = load_results(args.results, {"configurations": {}})
    for path in args.merge:
        # configurations measured elsewhere (a worktree's chain at a fixed commit) join this file; figures added
        # here since (--tta) are kept where the worktree's entry lacks them
        for name, entry in load_results(path, {"configurations": {}})["configurations"].items():
            results["configurations"][name] = {**results["configurations"].get(name, {}), **entry}
    if args.merge:
        summarize(results, args.seed, args.quick)
        save_results(args.results, results)
        return
    names = args.configs.split(",")
    if args.key and len(names) != 1:
        raise SystemExit("--as names the results key of one configuration")
    for name in names:
        if name not in experiment_names():
            raise SystemExit(f"unknown configuration {name!r}; the experiments of {EXPERIMENTS}: {experiment_names()}")
        key = entry_name(args.key or name, args.seed)
        if args.tta:
            entry = results["configurations"][key]
            entry.update(tta_figures(RUNS / (f"quick-{name}" if args.quick else key), entry["val_mean_px"] is not None, have=entry))
            summarize(results, args.seed, args.quick)
            save_results(args.results, results)
            continue
        results["configurations"][key] = run_config(name, key, args.seed, args.quick, args.extra)
        summarize(results, args.seed, args.quick)
        save_results(args.results, results)
        print(f"{key}: test mean {results['configurations'][key]['test_mean_px']:.2f} px", flush=True)


if __name__ == "__main__":
    main()
