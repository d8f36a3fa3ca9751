"""Build (or find) the cached tensors of a data set: `python prepare.py data=cxr_landmarks`."""

import json
import logging

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.builders import build_datamodule
from studykit.utils.io import guard_outputs

log = logging.getLogger("prepare")


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    guard_outputs(cfg.paths.get("data_root"), cfg.data.get("cache_dir"))
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    manifest = datamodule.manifest()
    log.info("cache %s", datamodule.cache_folder)
    print(json.dumps({"cache": str(datamodule.cache_folder), "splits": manifest.get("splits"),
                      "issues": manifest.get("n_issues"), "unannotated_images": manifest.get("n_unannotated")}, indent=2))
    print(f"problems and skipped files: {datamodule.cache_folder / 'report.json'}")


if __name__ == "__main__":
    main()
