"""Every experiment config composes, pairs its groups and builds its augmentation, before a long run finds a typo;
the benchmarks run the experiments by name."""

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from studykit.config import check_pairing
from studykit.data.augment import build_augmentation
from tests.conftest import CONF, ROOT, compose_cfg

sys.path.insert(0, str(ROOT / "benchmarks"))
import class_folder_defaults  # noqa: E402
import cxr_landmarks_best  # noqa: E402

import cxr_landmarks  # noqa: E402  (a script beside its `common` module, not a package)

EXPERIMENTS = sorted(p.relative_to(CONF / "experiment").with_suffix("").as_posix() for p in (CONF / "experiment").rglob("*.yaml"))
# configurations that need a value only the user has (a FER+ run's checkpoint)
NEEDS = {"jaffe_transfer": ["model.backbone.pretrained.path=/runs/ferplus/checkpoints/finetune/best.ckpt"],
         "class_folders": ["data.root=/any/photos"]}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    cfg = compose_cfg("train", [f"experiment={name}", *NEEDS.get(name, [])], tmp_path)
    check_pairing(cfg)
    assert cfg.phase.stages
    data = OmegaConf.to_container(cfg.data, resolve=True)
    # the augmentation keys are read when the data set is built: unknown ones fail here instead
    landmarks = cfg.task.name == "landmarks"
    build_augmentation(data["input_size"], True, data["augment"], **({"keypoints": True, "flip": False} if landmarks else {}))
    # a config says what it is: a comment line after the package header
    text = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_" and text[1].startswith("# ") and len(text[1]) > 20


def test_benchmarks_run_experiments_by_name():
    assert cxr_landmarks.experiment_names() == sorted(p.stem for p in (CONF / "experiment" / "cxr").glob("*.yaml"))
    assert cxr_landmarks.experiment_overrides("screen30-clahe") == ["experiment=cxr/screen30-clahe"]
    for overrides in cxr_landmarks_best.CONFIGS.values():
        (only,) = overrides
        assert only.startswith("experiment=") and Path(CONF / "experiment" / f"{only.split('=', 1)[1]}.yaml").is_file()


def test_headline_recipes_are_what_the_benchmarks_measured(tmp_path):
    """The headline experiments hold the settings their benchmark figures were measured with."""
    fer = compose_cfg("train", ["experiment=ferplus_expression"], tmp_path)
    assert (fer.model.backbone.name, fer.data.input_size, fer.data.train_target, fer.phase.stages.finetune.epochs) == \
        ("tf_efficientnet_lite0", 80, "distribution", 24)
    assert "ema" in fer.callbacks and fer.test_tta
    kl = compose_cfg("train", ["experiment=ferplus_distribution"], tmp_path)
    assert (kl.loss._target_, kl.data.input_size, kl.phase.stages.finetune.epochs) == ("studykit.losses.KLDivergenceLoss", 64, 15)
    jaffe = compose_cfg("train", ["experiment=jaffe_transfer", *NEEDS["jaffe_transfer"]], tmp_path)
    assert jaffe.model.backbone.pretrained.source == "file" and jaffe.data.prepare.pipeline.crop_resize.padding == 0
    assert "four_channel" in jaffe.data.prepare.pipeline.stages and jaffe.data.input_size == 80
    main = compose_cfg("train", ["experiment=cxr_refit"], tmp_path)
    assert list(main.data.fit_splits) == ["train", "val"] and main.test_tta and main.phase.stages.finetune.epochs == 70


def test_the_class_folder_recipe_is_the_one_the_benchmark_chose_and_refit(tmp_path):
    """experiment=class_folders on a data set composes exactly as benchmarks/class_folder_defaults.py's refit runs."""
    for data in class_folder_defaults.SETS.values():
        measured = compose_cfg("train", [*data, *class_folder_defaults.RECIPE, class_folder_defaults.HEADS["linear"],
                                         "data.fit_splits=[train,val]"], tmp_path)
        recipe = compose_cfg("train", ["experiment=class_folders", *data, "seed=42"], tmp_path)
        for section in ("data", "model", "phase", "loss", "task", "callbacks", "trainer"):
            assert OmegaConf.to_container(measured[section], resolve=True) == OmegaConf.to_container(recipe[section], resolve=True), section
