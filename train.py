"""Train a model: `python train.py model=resnet18 loss=complete` (see `python train.py --help`)."""

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.training.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    # the value a Hydra sweeper optimizes: the best validation score of the last phase
    return list(summary["stages"].values())[-1]["best_score"]


if __name__ == "__main__":
    main()
