"""Every configuration of the CXR benchmark composes and carries its overrides, before a 25-minute run finds a typo."""

import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from studykit.config import check_pairing
from studykit.data.augment import build_augmentation
from tests.conftest import ROOT, compose_cfg

sys.path.insert(0, str(ROOT / "benchmarks"))
import cxr_landmarks  # noqa: E402  (a script beside its `common` module, not a package)


@pytest.mark.parametrize("name", sorted(cxr_landmarks.CONFIGS))
def test_every_benchmark_configuration_composes(name, tmp_path):
    overrides = cxr_landmarks.CONFIGS[name]
    cfg = compose_cfg("train", overrides, tmp_path)
    check_pairing(cfg)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if "." not in key:
            continue  # a group choice (experiment=..., model/head=...): composing it is the check
        found = OmegaConf.select(cfg, key)
        if isinstance(found, (DictConfig, ListConfig)):
            found = OmegaConf.to_container(found)
        assert found == override.value(), f"{name}: {key} is {found!r}, not {override.value()!r}"
    data = OmegaConf.to_container(cfg.data, resolve=True)
    # the augmentation keys are read when the data set is built: unknown ones fail here instead
    build_augmentation(data["input_size"], True, data["augment"], keypoints=True, flip=False)
    assert cfg.phase.stages and cfg.task.name == "landmarks"
