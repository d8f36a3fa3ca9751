"""Does AFW help the 68-point face model? experiment=face68_helen (HELEN's training faces) against
experiment=face68_helen_afw (the same, with AFW's 337 faces as an extra training split): the same validation faces (a
tenth of helen_train_crops) and the same HELEN test faces, decided on validation NME. AFW is part of dlib's training
data and the second table of benchmarks/face_landmarks.py; a model trained on it is scored there on its own
training faces, so the choice also decides which AFW comparison stays fair.

    python benchmarks/face68_training.py                 # -> benchmarks/results/face68_training.json
    python benchmarks/face68_training.py --epochs 40 --seeds 42,1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, RUNS, load_results, machine, run_train, save_results, script_provenance

RESULTS = ROOT / "benchmarks" / "results" / "face68_training.json"
SETUPS = {"helen": "face68_helen", "helen+afw": "face68_helen_afw"}


def nme_of(report: dict) -> dict:
    nme = report["nme"]
    return {"nme": nme["mean"], "median": nme["median"], "failures": nme["failures"], "faces": report["n_images"], "auc": nme["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="the recipe has 40; a screen of both setups at fewer is fair")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = load_results(args.results, {"runs": {}})
    for name, experiment in SETUPS.items():
        for seed in [int(s) for s in args.seeds.split(",")]:
            folder = RUNS / "face68" / f"{experiment}-e{args.epochs}-s{seed}"
            run = run_train([f"experiment={experiment}", f"phase.stages.finetune.epochs={args.epochs}", f"seed={seed}"], folder)
            val_report = folder / "evaluation_val" / "test_report.json"
            if not val_report.is_file():  # the best checkpoint on the validation split, by evaluate.py
                subprocess.run([sys.executable, "evaluate.py", f"run_dir={folder}", "split=val"], cwd=ROOT, check=True)
            results["runs"][f"{name}/e{args.epochs}/s{seed}"] = {
                "setup": name, "experiment": experiment, "epochs": args.epochs, "seed": seed,
                "validation": nme_of(json.loads(val_report.read_text())), "test": nme_of(run["report"]),
                "train_minutes": run["train_seconds"] / 60, "command": run["command"]}
            save_results(args.results, results)
    by_setup = {name: [r for r in results["runs"].values() if r["setup"] == name and r["epochs"] == args.epochs] for name in SETUPS}
    means = {name: sum(r["validation"]["nme"] for r in runs) / len(runs) for name, runs in by_setup.items() if runs}
    results.setdefault("chosen_on_validation", {})[f"e{args.epochs}"] = {"validation_nme": means, "chosen": min(means, key=means.get)}
    results.update({"machine": machine(), **script_provenance(), "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    save_results(args.results, results)
    print(json.dumps(results["chosen_on_validation"][f"e{args.epochs}"], indent=1))


if __name__ == "__main__":
    main()
