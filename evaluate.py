"""Evaluate trained runs of any task (see `studykit.evaluation.runner`):

    python evaluate.py run_dir=outputs/<run>/<time> [tta=true] [visualize=true]
    python evaluate.py ensemble=multirun/<time> [tta=true] [visualize=true]
    python evaluate.py folds=multirun/<time> [tta=true]
    python evaluate.py sweep=multirun/<time>
    python evaluate.py compare=[<run A>,<run B>]
"""

if __name__ == "__main__":
    # glibc reads its malloc tunables only at start: re-execute with them before torch is imported
    from studykit.utils.allocator import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import studykit.config  # noqa: E402, F401  (registers config resolvers)
from studykit.evaluation.runner import evaluate, summary_line  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    print(summary_line(evaluate(cfg)))


if __name__ == "__main__":
    main()
