"""Face expression benchmark, part 1: throughput of each preprocessing stage on the 213 JAFFE photos and the
time of a fully cached rerun. Writes the "preprocessing" section of benchmarks/results/face_expression.json
(accuracy sections are added by the training runs, keys jaffe_subject_independent_accuracy and
ferplus_test_accuracy, once measured).

    python benchmarks/face_expression.py [--cache-dir /tmp/face_bench_cache]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, load_results, machine, save_results
from omegaconf import OmegaConf

from studykit.preprocessing.run import preprocess_faces

RESULTS = ROOT / "benchmarks" / "results" / "face_expression.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("STUDYKIT_DATA_ROOT", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/face_bench_cache"))
    parser.add_argument("--note", default="")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "jaffe.yaml")["prepare"], resolve=False)
    root = Path(args.data_root) / "jaffe" / "jaffe_db"
    if args.cache_dir.exists():
        shutil.rmtree(args.cache_dir)  # a cold start: every stage is built
    start = time.perf_counter()
    state, cold = preprocess_faces(root, args.cache_dir, data)
    cold_total = time.perf_counter() - start
    start = time.perf_counter()
    _, warm = preprocess_faces(root, args.cache_dir, data)
    warm_total = time.perf_counter() - start
    assert all(r.hit for r in warm), "the rerun should be fully cached"
    statuses = {s: state["status"].count(s) for s in sorted(set(state["status"]))}
    results = load_results(args.results, {})
    results["preprocessing"] = {
        "data": "JAFFE, 213 photos 256x256",
        "config": "conf/data/jaffe.yaml (crop padding 20 px, resize 512, sigma 3)",
        "stages": {r.name: {"seconds": r.seconds, "images": r.items, "images_per_s": r.items / r.seconds} for r in cold},
        "cold_total_seconds": cold_total,
        "cached_rerun_seconds": warm_total,
        "image_status": statuses,
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "note": args.note,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_results(args.results, results)
    for r in cold:
        print(f"{r.name:<18} {r.seconds:7.2f} s  {r.items / r.seconds:8.1f} images/s")
    print(f"cold total {cold_total:.1f} s, cached rerun {warm_total:.2f} s, status {statuses}")


if __name__ == "__main__":
    main()
