"""Train a model: `python train.py model=resnet18 loss=complete` (see `python train.py --help`)."""

if __name__ == "__main__":
    # glibc reads its malloc tunables only at start: re-execute with them before torch is imported
    from studykit.utils.allocator import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import studykit.config  # noqa: E402, F401  (registers config resolvers)
from studykit.training.run import train  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    # the value a Hydra sweeper optimizes: the best validation score of the last phase
    return list(summary["stages"].values())[-1]["best_score"]


if __name__ == "__main__":
    main()
