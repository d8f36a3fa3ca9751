"""Evaluate trained runs (see `studykit.evaluation.runner`):

    python evaluate.py run_dir=outputs/<run>/<time> [tta=true] [visualize=true]
    python evaluate.py ensemble=multirun/<time> [tta=true] [visualize=true]
    python evaluate.py sweep=multirun/<time>
    python evaluate.py compare=[<run A>,<run B>]
"""

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.evaluation.runner import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    report = evaluate(cfg)
    if "confusion_matrix" in report:
        print(f"test accuracy {report['accuracy']:.4f}, macro-F1 {report['f1_macro']:.4f}, balanced accuracy "
              f"{report['balanced_accuracy']:.4f} on {report['n_samples']} samples")
    elif "primary_metric" in report and "n_samples" in report:
        print(f"test KL {report['kl']:.4f}, TVD {report['tvd']:.4f}, EMD {report['emd']:.4f}, accuracy {report['accuracy']:.3f} on {report['n_samples']} samples")
    elif "mean_px" in report:
        print(f"test mean {report['mean_px']:.2f} px, median {report['median_px']:.2f} px on {report['n_images']} images")
    elif "configurations" in report:
        for row in report["configurations"]:
            print(f"{row['configuration']}: {row['mean_px']['mean']:.2f} +- {row['mean_px']['std']:.2f} px over {row['seeds']} seeds")
    else:
        print(report)


if __name__ == "__main__":
    main()
