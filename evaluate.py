"""Evaluate trained runs of any task (see `studykit.evaluation.runner`):

    python evaluate.py run_dir=outputs/<run>/<time> [tta=true] [visualize=true]
    python evaluate.py ensemble=multirun/<time> [tta=true] [visualize=true]
    python evaluate.py sweep=multirun/<time>
    python evaluate.py compare=[<run A>,<run B>]
"""

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.evaluation.runner import evaluate, summary_line


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    print(summary_line(evaluate(cfg)))


if __name__ == "__main__":
    main()
