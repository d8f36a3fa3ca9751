"""Every config group choice composes; wrong choices list the valid ones; --help lists the groups."""

import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from studykit.builders import build_datamodule, build_module
from studykit.config import PairingError, check_pairing, loss_tasks
from studykit.training.run import train
from tests.conftest import CONF, ROOT, compose_cfg

GROUPS = ["data", "task", "model", "loss", "phase", "hardware", "logger", "callbacks", "trainer", "paths", "experiment", "hparams_search"]


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# a data config brings its task and loss; a task chosen alone needs a data set that serves it
COMPANIONS = {
    "task=distribution": ["data=ferplus_distribution"], "task=classification": ["data=jaffe"],
    "data=image_folder": ["data.root=/any/folder/jaffe_db"], "experiment=class_folders": ["data.root=/any/folder/jaffe_db"],
    "data=landmark_folder": ["data.root=/any/folder/cxr_landmarks", "data.prepare.num_landmarks=15"],
    "data=distribution_folder": ["data.root=/any/folder/ferplus"],
}


@pytest.mark.parametrize("group,choice", [(g, c) for g in GROUPS for c in choices(g)])
def test_every_choice_composes(group, choice, tmp_path):
    override = f"{group}={choice}"
    cfg = compose_cfg("train", [override, *COMPANIONS.get(override, [])], tmp_path)
    if group != "loss":
        check_pairing(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["seed"] == 42 and resolved["phase"]["stages"]
    assert resolved["data"]["root"].endswith(("cxr_landmarks", "ferplus", "jaffe_db", "face_landmarks_68"))


LANDMARK_LOSSES = ["complete", "distance", "l1", "mse", "symmetry", "wing"]
DISTRIBUTION_LOSSES = ["kl", "kl_l1", "l1", "mse"]


def test_loss_lists_cover_every_choice():
    assert set(LANDMARK_LOSSES) | set(DISTRIBUTION_LOSSES) | {"ce"} == set(choices("loss"))


@pytest.mark.parametrize("loss", LANDMARK_LOSSES)
def test_every_landmark_loss_instantiates_and_runs(loss, tmp_path):
    cfg = compose_cfg("train", [f"loss={loss}"], tmp_path)
    fn = instantiate(cfg.loss, _convert_="all")
    pred = torch.rand(2, 15, 2) * 299
    value = fn(pred, pred * 1.05 + 1.0)
    assert value.ndim == 0 and torch.isfinite(value) and value > 0


@pytest.mark.parametrize("loss", DISTRIBUTION_LOSSES)
def test_every_distribution_loss_takes_logits(loss, tmp_path):
    cfg = compose_cfg("train", ["experiment=ferplus_distribution", f"loss={loss}"], tmp_path)
    fn = instantiate(cfg.loss, _convert_="all")
    logits = torch.randn(4, 8)
    target = torch.softmax(torch.randn(4, 8), -1)
    assert torch.isfinite(fn(logits, target)) and fn(logits, target) > 0
    assert fn(torch.log(target) * 1.0, target) < fn(logits, target)  # perfect logits score better


def test_kl_on_a_landmark_task_is_a_clear_error(tmp_path):
    cfg = compose_cfg("train", ["loss=kl"], tmp_path)
    with pytest.raises(PairingError, match=r"loss=kl is a loss for \['distribution'\], not for task=landmarks"):
        check_pairing(cfg)
    with pytest.raises(Exception, match="needs logits"):
        instantiate(cfg.loss, _convert_="all")


@pytest.mark.parametrize("overrides,message", [
    (["loss=complete", "data=jaffe"], r"loss=complete is a loss for \['landmarks'\], not for task=classification"),
    (["data=jaffe", "task=landmarks"], r"data=jaffe does not serve task=landmarks"),
    (["data=cxr_landmarks", "task=distribution"], r"data=cxr_landmarks does not serve task=distribution"),
    (["experiment=ferplus_distribution", "loss=wing"], r"loss=wing is a loss for \['landmarks'\], not for task=distribution"),
])
def test_invalid_pairings_fail_at_compose_time_naming_both(overrides, message, tmp_path):
    cfg = compose_cfg("train", overrides, tmp_path)
    with pytest.raises(PairingError, match=message):
        check_pairing(cfg)
    with pytest.raises(PairingError):  # train() checks before it builds or resolves anything
        train(cfg)


def test_a_data_set_alone_brings_its_task_and_loss(tmp_path):
    for data, task, loss in (("cxr_landmarks", "landmarks", "CombinedLoss"), ("jaffe", "classification", "CrossEntropyLoss"),
                             ("ferplus_expression", "classification", "CrossEntropyLoss"),
                             ("ferplus_distribution", "distribution", "KLDivergenceLoss")):
        cfg = compose_cfg("train", [f"data={data}"], tmp_path)
        assert cfg.task.name == task and cfg.loss._target_.endswith(loss)
        # the command line still chooses another loss for the same task
    assert compose_cfg("train", ["data=ferplus_distribution", "loss=mse"], tmp_path).loss._target_.endswith("MSELoss")


def valid_losses(data: str) -> list[str]:
    task = {"cxr_landmarks": "landmarks", "landmark_folder": "landmarks", "face68_helen": "landmarks", "ferplus_distribution": "distribution",
            "distribution_folder": "distribution"}.get(data, "classification")
    return [loss for loss in choices("loss") if task in (loss_tasks(OmegaConf.load(CONF / "loss" / f"{loss}.yaml"))
                                                          if loss not in ("complete", "kl_l1") else
                                                          {"complete": {"landmarks"}, "kl_l1": {"distribution"}}[loss])]


# every model and every valid loss of each data set, each built with every phase: models and losses are
# independent of each other, so each model is built with one loss and each loss on one model
COMBINATIONS = sorted({(d, m, valid_losses(d)[0]) for d in choices("data") for m in choices("model")}
                      | {(d, choices("model")[0], loss) for d in choices("data") for loss in valid_losses(d)})


def filled(cfg, datamodule) -> None:
    """What train.py fills from the prepared data, taken from the data config instead (nothing is prepared)."""
    module = cfg.task.module
    classes = list(cfg.data.get("classes") or ["a", "b", "c"])
    stages = OmegaConf.select(cfg, "data.prepare.pipeline.stages", default=[]) or []
    values = {"num_classes": len(classes), "classes": classes, "in_chans": 4 if "four_channel" in stages else 3,
              "num_landmarks": datamodule.num_landmarks if hasattr(datamodule, "num_landmarks") else 0,
              "categories": list(OmegaConf.select(cfg, "data.prepare.categories", default=[]) or [])}
    for key, value in values.items():
        if key in module.keys() and OmegaConf.is_missing(module, key):
            module[key] = value


@pytest.mark.parametrize("data,model,loss", COMBINATIONS)
def test_every_valid_combination_instantiates(data, model, loss, tmp_path):
    """data x model x loss x phase: the data module, the loss and the LightningModule are built, and every
    phase's stages give an optimizer over the right parameter groups."""
    extra = {"image_folder": ["data.root=/any/folder"], "distribution_folder": ["data.root=/any/folder"],
             "landmark_folder": ["data.root=/any/folder", "data.prepare.num_landmarks=19"]}.get(data, [])
    module = None
    for phase in choices("phase"):
        cfg = compose_cfg("train", [f"data={data}", f"model={model}", f"loss={loss}", f"phase={phase}", *extra], tmp_path)
        check_pairing(cfg)
        if module is None:
            datamodule = build_datamodule(cfg)
            filled(cfg, datamodule)
            module = build_module(cfg)
            assert module.loss_fn is not None and sum(p.numel() for p in module.parameters()) > 0
        for stage in OmegaConf.to_container(cfg.phase.stages, resolve=True).values():
            if (stage.get("scheduler") or {}).get("interval") == "step":
                stage["scheduler"]["total_steps"] = 100  # no trainer here to count the steps
            module.set_stage(stage)
            optimizers = module.configure_optimizers()
            optimizer = optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers
            assert len(optimizer.param_groups) == (1 if stage["freeze_backbone"] else 2)


def test_complete_loss_weights(tmp_path):
    cfg = compose_cfg("train", ["loss=complete", "loss.terms.symmetry.weight=0.5"], tmp_path)
    assert cfg.loss.terms.wing.loss.w == 10.0 and cfg.loss.terms.distance.weight == 0.2
    assert instantiate(cfg.loss, _convert_="all").weights == {"wing": 1.0, "symmetry": 0.5, "distance": 0.2}


def test_two_phase_has_both_stages_in_order(tmp_path):
    cfg = compose_cfg("train", ["phase=two_phase"], tmp_path)
    stages = cfg.phase.stages
    assert list(stages) == ["head_only", "finetune"]
    assert stages.head_only.freeze_backbone and stages.head_only.optimizer.lr == 1e-3 and stages.head_only.epochs == 15
    ft = stages.finetune
    assert (ft.optimizer.backbone_lr, ft.optimizer.lr, ft.optimizer.weight_decay) == (2e-5, 2e-4, 5e-5)
    assert (ft.epochs, ft.scheduler._target_, ft.scheduler.eta_min) == (55, "torch.optim.lr_scheduler.CosineAnnealingLR", 2e-6)
    assert cfg.data.batch_size == 8 and cfg.callbacks.early_stopping.patience == 15


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYKIT_DATA_ROOT", str(tmp_path / "elsewhere"))
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.output_dir=x"])
    assert cfg.data.root == str(tmp_path / "elsewhere" / "cxr_landmarks")


def test_wrong_choice_lists_valid_options(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("train", ["model=resnet_18"], tmp_path)
    message = str(err.value)
    assert "resnet_18" in message
    for valid in choices("model"):
        assert valid in message


def test_help_lists_groups():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for group in GROUPS:
        assert f"{group}:" in out.stdout, group
    assert "efficientnet_lite0" in out.stdout and "two_phase" in out.stdout


def test_several_loggers_at_once(tmp_path):
    cfg = compose_cfg("train", ["logger=[csv,tensorboard,wandb]"], tmp_path)
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"} and cfg.logger.wandb.offline is True


@pytest.mark.parametrize("head", sorted(p.stem for p in (CONF / "model" / "head").glob("*.yaml")))
def test_model_head_choices_compose(head, tmp_path):
    cfg = compose_cfg("train", [f"model/head={head}", "model=efficientnet_lite0"], tmp_path)
    assert cfg.model.head.type == {"linear": "mlp"}.get(head, head.split("_")[0]) and cfg.model.backbone.name == "tf_efficientnet_lite0"


def test_make_help_lists_every_target():
    import re

    targets = re.findall(r"^([a-zA-Z0-9_-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(targets) <= listed, set(targets) - listed


def test_seed_protocol_and_main_job_recipes(tmp_path):
    seed = OmegaConf.to_container(compose_cfg("train", ["experiment=cxr_seed_protocol"], tmp_path), resolve=True)
    stages = seed["phase"]["stages"]
    assert list(stages) == ["head_only", "finetune"]
    assert stages["head_only"]["epochs"] == 15 and stages["head_only"]["freeze_backbone"]
    assert stages["finetune"]["epochs"] == 55 and stages["finetune"]["scheduler"]["_target_"].endswith("CosineAnnealingLR")
    assert (stages["finetune"]["optimizer"]["lr"], stages["finetune"]["optimizer"]["backbone_lr"]) == (2e-4, 2e-5)
    assert seed["model"]["backbone"]["name"] == "tf_efficientnet_lite0" and seed["model"]["head"]["dropout"] == [0.5, 0.25, 0.125]
    assert {k: v["weight"] for k, v in seed["loss"]["terms"].items()} == {"wing": 1.0, "symmetry": 0.3, "distance": 0.2}
    assert seed["data"]["batch_size"] == 8

    main = OmegaConf.to_container(compose_cfg("train", ["experiment=cxr_complete"], tmp_path), resolve=True)
    assert list(main["phase"]["stages"]) == ["finetune"]
    assert main["phase"]["stages"]["finetune"]["scheduler"]["_target_"] == "studykit.models.base.warmup_cosine"
    assert main["hardware"]["channels_last"] and main["data"]["batch_size"] == 16
    assert main["model"]["backbone"]["pretrained"]["source"] == "package"
    assert main["model"]["head"]["type"] == "heatmap"
    assert main["data"]["fit_splits"] == ["train"]  # the recipe is chosen on validation
    # the main job refits that recipe on train + val and differs from it in nothing else
    refit = OmegaConf.to_container(compose_cfg("train", ["experiment=cxr_refit"], tmp_path), resolve=True)
    assert refit["data"].pop("fit_splits") == ["train", "val"] and refit.pop("test_tta") and not main.pop("test_tta")
    assert {**refit, "data": {**refit["data"], "fit_splits": ["train"]}} == main
    # another head replaces the recipe's whole (no heat-map keys left over)
    mlp = OmegaConf.to_container(compose_cfg("train", ["experiment=cxr_complete", "model/head=mlp_light"], tmp_path), resolve=True)
    assert mlp["model"]["head"]["type"] == "mlp" and mlp["model"]["head"]["dropout"] == [0.1, 0.0, 0.0] and "sigma" not in mlp["model"]["head"]
