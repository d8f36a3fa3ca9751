from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import studykit.config  # noqa: F401  (resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA_ROOT = Path(os.environ.get("STUDYKIT_DATA_ROOT", ROOT.parent / "shared" / "data")).resolve()
CXR = DATA_ROOT / "cxr_landmarks"

SPLITS = {"train": "coordenadas/coordenadas_train.csv", "val": "coordenadas/coordenadas_val.csv",
          "test": "coordenadas/coordenadas_test.csv"}
TINY = {"train": 6, "val": 3, "test": 3}

# a handful of real X-rays at a small size: every training test runs in seconds on two cores
TINY_CXR = [
    "experiment=cxr_smoke",
    "data.prepare.image_size=64",
    "data.input_size=64",
    "callbacks.progress=null",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="session")
def cxr_root() -> Path:
    if not CXR.is_dir():
        pytest.fail(f"real data not found at {CXR}: set STUDYKIT_DATA_ROOT to the shared data folder")
    return CXR


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_root = str(DATA_ROOT)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        del cfg.hydra
    return cfg


def train_and_evaluate(cfg: DictConfig, tmp_path: Path, cache_dir: Path) -> tuple[Path, dict, dict]:
    """Train a composed config, then run evaluate.py on its run folder: (run folder, test report, evaluation)."""
    from studykit.evaluation.runner import evaluate
    from studykit.training.run import train

    train(cfg)
    run = Path(cfg.paths.output_dir)
    report = json.loads((run / "test_report.json").read_text())
    return run, report, evaluate(compose_cfg("evaluate", [f"run_dir={run}"], tmp_path / "ev", cache_dir))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One tensor cache for the training tests, so the tiny subset is prepared once per session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, shared_cache):
    def _make(overrides: list[str] | None = None, config_name: str = "train", tiny: bool = True) -> DictConfig:
        return compose_cfg(config_name, (TINY_CXR if tiny else []) + list(overrides or []), tmp_path / "run", shared_cache)

    return _make


@pytest.fixture
def broken_root(cxr_root, tmp_path) -> Path:
    """A copy of a few real X-rays with an annotation file full of defects."""
    root = tmp_path / "data"
    rows = (cxr_root / SPLITS["train"]).read_text().splitlines()[:3]
    for r in rows:
        image_id = r.split(",")[-1]
        folder = image_id.rsplit("-", 1)[0].replace(" ", "_")
        (root / "dataset" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(cxr_root / "dataset" / folder / f"{image_id}.png", root / "dataset" / folder)
    (root / "dataset" / "COVID").mkdir(exist_ok=True)
    (root / "dataset" / "COVID" / "COVID-99999.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = rows[0].split(",")
    outside = good.copy()
    outside[1] = "400"
    nonnum = good.copy()
    nonnum[5] = "abc"
    lines = [
        rows[0], rows[1], rows[2],
        ",".join(good[:-3] + [good[-1]]),                    # wrong column count
        ",".join(nonnum),                                    # non-numeric value
        ",".join(outside),                                   # coordinate outside the 299x299 image
        ",".join(good[:-1] + ["COVID-12345"]),               # image file missing
        ",".join(good[:-1] + ["COVID-99999"]),               # unreadable (corrupt) PNG
        ",".join(good[:-1] + ["../../etc-passwd"]),          # escapes the data root
        ",".join(good[:-1] + ["Alien-1"]),                   # class folder not in the category list
    ]
    (root / "coordenadas").mkdir()
    for split in ("train", "val", "test"):
        (root / "coordenadas" / f"coordenadas_{split}.csv").write_text("\n".join(lines if split == "train" else rows[:1]) + "\n")
    (root / "dataset" / "Normal").mkdir(exist_ok=True)
    shutil.copy(next((cxr_root / "dataset" / "Normal").glob("*.png")), root / "dataset" / "Normal" / "Normal-orphan.png")
    return root


