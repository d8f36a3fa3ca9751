"""The defaults a class-folder data set gets (conf/data/image_folder.yaml), chosen by validation across the shared
face sets, and compared with a plain PyTorch loop on the same faces, backbone and epochs.

Sets: JAFFE (213 photos, 10 subjects; the 5 subject folds, every photo tested once) and a FER+ subset (its own
train / val / test folders, the first N faces of each). Candidates differ in the head (the X-ray seed's 3-layer MLP
with dropout 0.5, or one linear layer after dropout 0.2); everything else is the default recipe (EfficientNet-Lite0
from ImageNet, 96 px, AdamW with warm-up + cosine, 12 epochs, batch 16). Each candidate trains on the training
split and is scored on the validation split (mean over JAFFE's folds and FER+); the chosen head is then refit on
train + val (`data.fit_splits=[train,val]`, the last epoch tested) for the test figures, pooled over JAFFE's folds by
`evaluate.py folds=...`' own code. The reference, `plain_loop`, is ~40 lines of plain PyTorch: the same cached
faces and Lite0 weights, a linear head, AdamW + cosine, the same epochs and flips, trained on train + val.

    python benchmarks/class_folder_defaults.py                 # -> benchmarks/results/class_folder_defaults.json
    python benchmarks/class_folder_defaults.py --sets jaffe --folds 0,1
    python benchmarks/class_folder_defaults.py --sets jaffe --probe --seeds 42,1,2 --variants default,plain_loop
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from common import DATA_ROOT, ROOT, RUNS, load_results, machine, run_train, save_results, script_provenance

RESULTS = ROOT / "benchmarks" / "results" / "class_folder_defaults.json"
RECIPE = ["model=efficientnet_lite0", "phase=warmup_cosine", "phase.stages.finetune.epochs=12", "data.input_size=96",
          "data.batch_size=16", "seed=42"]
SETS = {
    "jaffe": ["data=jaffe"],
    "ferplus_subset": ["data=ferplus_expression", "data.prepare.limit_per_split={train:1500,val:300,test:600}"],
}
HEADS = {"seed_mlp": "model/head=mlp", "linear": "model/head=linear"}
# --probe: the refit default with one difference from the plain loop removed at a time, and the plain loop with the
# framework's warm-up; each over --seeds and every fold, to tell a cause of the gap from seed noise
PROBES = {
    "default": [],
    "no_warmup": ["phase.stages.finetune.scheduler.warmup=0"],
    "contiguous": ["hardware.channels_last=false"],
    "no_warmup_contiguous": ["phase.stages.finetune.scheduler.warmup=0", "hardware.channels_last=false"],
}
# the plain loop as is, or with the framework's warm-up (that train.py's training otherwise equals the loop's step for
# step is a test: tests/test_cross_validation.py)
PLAIN_PROBES = {"plain_loop": {}, "plain_loop_warmup": {"warmup": 0.1}}


def folds_of(name: str, args) -> list[int | None]:
    return [int(f) for f in args.folds.split(",")] if name == "jaffe" else [None]


def plain_loop(overrides: list[str], epochs: int = 12, seed: int = 42, warmup: float = 0.0) -> dict:
    """The reference: the data module's cached faces, Lite0 (same ImageNet weights), a linear head, a plain loop.
    For the probes: `warmup` > 0, the framework's warm-up + cosine factor instead of a plain cosine."""
    from hydra import compose, initialize_config_dir

    import studykit.config  # noqa: F401
    from studykit.builders import build_datamodule
    from studykit.models.backbones import create_backbone
    from studykit.models.base import warmup_cosine_factor

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        # the data and cache of train.py's runs (run from the repository root), wherever this script is started
        cfg = compose("train", overrides=[*overrides, f"paths.data_root={DATA_ROOT}", f"paths.cache_dir={ROOT / '.cache'}"])
    torch.manual_seed(seed)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    train_set = torch.utils.data.ConcatDataset([dm.dataset("train", train=True), dm.dataset("val", train=True)])
    test_set = dm.dataset("test", train=False)
    net = create_backbone(cfg.model.backbone.name, dict(cfg.model.backbone.pretrained), in_chans=dm.in_chans)
    model = torch.nn.Sequential(net, torch.nn.Dropout(0.2), torch.nn.Linear(net.num_features, dm.num_classes))
    loader = torch.utils.data.DataLoader(train_set, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    steps = epochs * len(loader)
    # with warmup 0 this is the plain cosine 0.5 * (1 + cos(pi * step / steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_factor(steps, round(warmup * steps)))
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in loader:
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["target"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b["image"]).argmax(1) for b in torch.utils.data.DataLoader(test_set, batch_size=64)])
    labels = test_set.labels
    return {"correct": int((pred == labels).sum()), "n": int(len(labels)), "accuracy": float((pred == labels).float().mean()),
            "seconds": time.perf_counter() - start}


def seed_difference(a: dict, b: dict) -> dict:
    """Difference of two probes' means over their seeds, with its standard error (Welch: the seeds of the two are
    not paired - the same seed draws differently in each)."""
    x = [v["accuracy"] for v in a["seeds"].values()]
    y = [v["accuracy"] for v in b["seeds"].values()]
    se = math.sqrt(np.var(x, ddof=1) / len(x) + np.var(y, ddof=1) / len(y)) if len(x) > 1 and len(y) > 1 else None
    diff = float(np.mean(x) - np.mean(y))
    return {"difference": diff, "standard_error": se, "in_standard_errors": diff / se if se else None, "seeds": [len(x), len(y)]}


def probe(results: dict, args) -> None:
    """Pooled test accuracy of each --variants entry (PROBES or PLAIN_PROBES) for each --seeds seed, over every fold;
    the linear head refit on train + val, as the default recipe."""
    for name in args.sets.split(","):
        probes = results["sets"].setdefault(name, {}).setdefault("probes", {})
        for variant in args.variants.split(","):
            if variant not in PROBES and variant not in PLAIN_PROBES:
                raise SystemExit(f"--variants: {variant!r} is none of {sorted(PROBES) + sorted(PLAIN_PROBES)}")
            for seed in [int(s) for s in args.seeds.split(",")]:
                per_fold = []
                folder = RUNS / "class_folder" / name / f"probe-{variant}-s{seed}"
                for fold in folds_of(name, args):
                    fold_args = [f"data.fold={fold}"] if fold is not None else []
                    overrides = [*SETS[name], *[r for r in RECIPE if not r.startswith("seed=")], f"seed={seed}", *fold_args]
                    if variant in PLAIN_PROBES:
                        out = plain_loop([*overrides, HEADS["linear"]], seed=seed, **PLAIN_PROBES[variant])
                        per_fold.append({"correct": out["correct"], "n": out["n"]})
                    else:
                        run = run_train([*overrides, HEADS["linear"], "data.fit_splits=[train,val]", *PROBES[variant]], folder / str(fold or 0))
                        report = run["report"]
                        per_fold.append({"correct": round(report["accuracy"] * report["n_samples"]), "n": report["n_samples"]})
                # pooled over the folds: what evaluate.py folds= gives (equal to 1e-6: pooled_check)
                accuracy = sum(f["correct"] for f in per_fold) / sum(f["n"] for f in per_fold)
                probes.setdefault(variant, {"overrides": PROBES.get(variant), "plain_loop_options": PLAIN_PROBES.get(variant), "seeds": {}})
                probes[variant]["seeds"][str(seed)] = {"accuracy": accuracy, "per_fold": [f["correct"] / f["n"] for f in per_fold]}
                accs = [v["accuracy"] for v in probes[variant]["seeds"].values()]
                probes[variant].update(mean=float(np.mean(accs)), std=float(np.std(accs, ddof=1)) if len(accs) > 1 else None, n_seeds=len(accs))
                print(name, variant, seed, accuracy, flush=True)
                if "default" in probes and "plain_loop" in probes:
                    probes["default_minus_plain"] = seed_difference(probes["default"], probes["plain_loop"])
                results["probes_provenance"] = {"machine": machine(), **script_provenance(),
                                                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                save_results(args.results, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="jaffe,ferplus_subset")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--probe", action="store_true", help="only the probes: --variants over --seeds (pooled test accuracy)")
    parser.add_argument("--variants", default=",".join([*PROBES, *PLAIN_PROBES]))
    parser.add_argument("--seeds", default="42")
    args = parser.parse_args()
    from studykit.evaluation.runner import evaluate_folds

    results = load_results(args.results, {"sets": {}})
    if args.probe:
        return probe(results, args)
    results.update({"recipe": RECIPE, "heads": HEADS, "chosen_by": "validation accuracy, mean over the sets (JAFFE: over its folds)"})
    for name in args.sets.split(","):
        entry = results["sets"].setdefault(name, {"validation": {}, "test": {}})
        for head, head_override in HEADS.items():  # 1. the candidates, scored on validation
            scores = []
            for fold in folds_of(name, args):
                fold_args = [f"data.fold={fold}"] if fold is not None else []
                run = run_train([*SETS[name], *RECIPE, head_override, *fold_args], RUNS / "class_folder" / name / f"val-{head}" / str(fold or 0))
                stages = run["summary"]["stages"]
                scores.append(stages[list(stages)[-1]]["best_score"])
            entry["validation"][head] = {"val_accuracy": float(np.mean(scores)), "per_fold": scores}
            print(name, head, "validation", entry["validation"][head], flush=True)
            save_results(args.results, results)
    chosen = max(HEADS, key=lambda h: np.mean([results["sets"][s]["validation"][h]["val_accuracy"] for s in args.sets.split(",")]))
    results["chosen_head"] = chosen
    for name in args.sets.split(","):  # 2. the chosen head refit on train + val, and the plain loop, on test
        entry = results["sets"][name]
        folder = RUNS / "class_folder" / name / f"refit-{chosen}"
        plain = []
        for fold in folds_of(name, args):
            fold_args = [f"data.fold={fold}"] if fold is not None else []
            run_train([*SETS[name], *RECIPE, HEADS[chosen], "data.fit_splits=[train,val]", *fold_args], folder / str(fold or 0))
            plain.append(plain_loop([*SETS[name], *RECIPE, *fold_args]))
            print(name, fold, "plain loop", plain[-1], flush=True)
        pooled = evaluate_folds(folder) if name == "jaffe" and len(folds_of(name, args)) == 5 else None
        single = json.loads((folder / "0" / "test_report.json").read_text()) if pooled is None else None
        report = pooled or single
        entry["test"] = {"default": {"head": chosen, "fit_splits": ["train", "val"], "accuracy": report["accuracy"],
                                     "f1_macro": report.get("f1_macro"), "n": report["n_samples"],
                                     "per_fold_mean_std": (pooled or {}).get("per_fold_mean_std", {}).get("accuracy")},
                         "plain_loop": {"accuracy": sum(p["correct"] for p in plain) / sum(p["n"] for p in plain),
                                        "n": sum(p["n"] for p in plain), "per_fold": plain},
                         "folds": len(folds_of(name, args))}
        entry["test"]["default_minus_plain"] = entry["test"]["default"]["accuracy"] - entry["test"]["plain_loop"]["accuracy"]
        if pooled is not None:  # evaluate.py folds= against the fold reports' sample-weighted mean (face_expression.py's rule)
            reports = [json.loads((folder / str(f) / "test_report.json").read_text()) for f in folds_of(name, args)]
            weighted = sum(r["accuracy"] * r["n_samples"] for r in reports) / sum(r["n_samples"] for r in reports)
            entry["test"]["pooled_check"] = {"evaluate_folds_accuracy": pooled["accuracy"], "fold_reports_weighted_mean": weighted,
                                             "samples": pooled["coverage"]["samples"], "equal": abs(pooled["accuracy"] - weighted) < 1e-6}
        print(name, json.dumps(entry["test"]["default"]), "plain", entry["test"]["plain_loop"]["accuracy"], flush=True)
        save_results(args.results, results)
    results.update({"machine": machine(), **script_provenance(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_results(args.results, results)


if __name__ == "__main__":
    main()
