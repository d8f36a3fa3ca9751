from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One tensor cache for the training tests, so the tiny subset is prepared once per session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path, shared_cache):
    def _make(overrides: list[str] | None = None, config_name: str = "train", tiny: bool = True) -> DictConfig:
        return compose_cfg(config_name, (TINY_CXR if tiny else []) + list(overrides or []), tmp_path / "run", shared_cache)

    return _make
