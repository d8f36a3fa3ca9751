"""Export a trained run to ONNX (see `studykit.inference.export`):

    python export.py run_dir=outputs/<run>/<time> [format=onnx] [output_dir=...]
"""

import hydra
from omegaconf import DictConfig

import studykit.config  # noqa: F401  (registers config resolvers)
from studykit.inference.export import export_onnx
from studykit.utils import trust


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    if cfg.format != "onnx":
        raise ValueError(f"format={cfg.format!r}: only onnx is supported")
    if not cfg.get("run_dir"):
        raise ValueError("run_dir=<train.py run folder> is required")
    trust.allow(cfg.get("trusted_targets"))
    constants = export_onnx(cfg.run_dir, cfg.get("output_dir"), int(cfg.opset), cfg.paths.get("data_root"))
    print(f"exported {constants['task']} model (opset {constants['opset']}, input {constants['in_chans']}x"
          f"{constants['input_size']}x{constants['input_size']}) to {cfg.get('output_dir') or cfg.run_dir + '/export'}")


if __name__ == "__main__":
    main()
