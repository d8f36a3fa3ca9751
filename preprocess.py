"""Run a face data set through the cached preprocessing stages: `python preprocess.py data=jaffe`."""

import json
import logging

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.data.face_sources import preprocess

log = logging.getLogger("preprocess")


@hydra.main(version_base="1.3", config_path="conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    state, results = preprocess(cfg)
    rows = [{"stage": r.name, "cached": r.hit, "seconds": round(r.seconds, 3), "images": r.items,
             "images_per_s": round(r.items / r.seconds, 1) if r.seconds > 0 else None, "folder": str(r.folder)} for r in results]
    for row in rows:
        print(f"{row['stage']:<18} {'cached' if row['cached'] else 'built ':<7} {row['seconds']:>8.2f} s  {row['folder']}")
    statuses = {s: state["status"].count(s) for s in sorted(set(state["status"]))}
    print(json.dumps({"status": statuses}, indent=None))


if __name__ == "__main__":
    main()
