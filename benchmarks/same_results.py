"""Do refactors keep results? Trains fixed runs with a fixed seed - the main job (X-ray landmarks, 70 epochs:
the longest), a CXR smoke run, a JAFFE subject fold and a FER+ smoke run - and records their test metrics under
the current git commit in benchmarks/results/same_results.json; with --against COMMIT, also checks that every
metric equals the one recorded for that commit. `--cases` picks some of them.

    python benchmarks/same_results.py                      # record this commit's metrics
    python benchmarks/same_results.py --against a4147fd    # record, then compare with an earlier record
    python benchmarks/same_results.py --compare 19545d7 a4147fd   # compare two stored records, no training

Run each record from a checkout of its commit, with that checkout's own code on the path (an editable install
points at one checkout: `PYTHONPATH=<checkout>/src`).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys

from common import ROOT, RUNS, load_results, machine, run_train, save_results

RESULTS = ROOT / "benchmarks" / "results" / "same_results.json"
# each case spelled out with groups and options only, so that it means the same run at every commit
CASES = {
    "cxr_smoke": ["experiment=cxr_smoke", "model=efficientnet_lite0", "seed=7"],
    "jaffe_fold0": ["data=jaffe", "model=resnet18", "phase=two_phase", "phase.stages.finetune.optimizer.lr=1e-3",
                    "phase.stages.finetune.optimizer.backbone_lr=1e-4", "data.input_size=64", "trainer.max_epochs=1", "seed=7"],
    "ferplus_smoke": ["data=ferplus_expression", "model=efficientnet_lite0", "phase=finetune", "data.input_size=48",
                      "data.prepare.limit_per_split={train:512,val:128,test:128}", "trainer.max_epochs=1", "seed=7"],
    "main_job": ["experiment=cxr_refit", "seed=42"],
}


def numbers(report: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a test report, flattened (paths, names and timings left out)."""
    out = {}
    for key, value in report.items():
        if key in ("run_name", "checkpoint", "run_dir", "seconds", "primary_metric"):
            continue
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def compare(new: dict, old: dict) -> dict[str, list[str]]:
    """Per case, the metrics whose values differ (or exist in one record only)."""
    diffs = {}
    for name, case in new.items():
        before, after = old[name]["metrics"], case["metrics"]
        keys = sorted(set(before) | set(after))
        diffs[name] = [k for k in keys if not math.isclose(before.get(k, math.nan), after.get(k, math.nan), rel_tol=1e-6, abs_tol=1e-9)]
    return diffs


def report(results: dict, label: str, diffs: dict[str, list[str]]) -> None:
    results["comparisons"] = {**results.get("comparisons", {}), label: diffs}
    save_results(RESULTS, results)
    for name, keys in diffs.items():
        print(f"{name}: {'same metrics' if not keys else 'DIFFERENT: ' + ', '.join(keys)}")
    if any(diffs.values()):
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="a commit whose recorded metrics these must equal")
    parser.add_argument("--compare", nargs=2, metavar=("NEW", "OLD"), help="compare two stored records without training")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="the cases to run (default: all)")
    args = parser.parse_args()
    if args.compare:
        results = load_results(RESULTS, {"commits": {}})
        new, old = (results["commits"][c]["cases"] for c in args.compare)
        report(results, f"{args.compare[0]} vs {args.compare[1]}", compare(new, old))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    results = load_results(RESULTS, {"commits": {}})
    record = {}
    for name in args.cases:
        overrides = CASES[name]
        run_dir = RUNS / "same_results" / commit / name
        shutil.rmtree(run_dir, ignore_errors=True)  # always a fresh run: a reused one proves nothing
        run = run_train(overrides, run_dir)
        record[name] = {"command": run["command"], "metrics": numbers(run["report"])}
    entry = results["commits"].setdefault(commit, {"cases": {}})
    entry["machine"] = machine()
    entry["cases"].update(record)
    if args.against:
        base = results["commits"].get(args.against)
        if base is None:
            sys.exit(f"no record for commit {args.against} in {RESULTS}; run this script at that commit first")
        report(results, f"{commit} vs {args.against}", compare(record, base["cases"]))
        return
    save_results(RESULTS, results)
    print(f"recorded {commit}: " + ", ".join(f"{n} {len(c['metrics'])} numbers" for n, c in record.items()))


if __name__ == "__main__":
    main()
