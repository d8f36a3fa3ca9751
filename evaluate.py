"""Test a trained run: `python evaluate.py run_dir=outputs/<run>/<time>` (checkpoint=... to pick one)."""

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.training.run import evaluate_run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    report = evaluate_run(cfg)
    print(f"test mean {report['mean_px']:.2f} px, median {report['median_px']:.2f} px on {report['n_images']} images")


if __name__ == "__main__":
    main()
