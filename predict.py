"""Predict on new images with a trained run (see `studykit.inference.predict`):

    python predict.py run_dir=outputs/<run>/<time> input=<image or folder> [tta=true] [visualize=true]
    python predict.py ensemble=multirun/<time> input=<folder>          # the members' mean
    python predict.py run_dir=... input=... engine=onnx                # the run's export/model.onnx
"""

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.inference.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    result = predict(cfg)
    counted = {k: result[k] for k in ("images", "predicted", "faces", "rows") if k in result}
    print(f"{result['task']}: {counted}; predictions: {result['predictions_csv']}")


if __name__ == "__main__":
    main()
