"""predict.py and export.py on tiny real runs of the three tasks: coordinates in each image's own pixels,
face rows with statuses, distributions, ensembles, ONNX parity with torch, and bad input."""

import csv
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from studykit.inference.export import export_onnx
from studykit.inference.predict import list_inputs, predict
from studykit.preprocessing import faces
from studykit.training.run import train
from tests.conftest import CXR, DATA_ROOT, TINY_CXR, compose_cfg

pytestmark = pytest.mark.slow
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
JAFFE = DATA_ROOT / "jaffe" / "jaffe_db"
FER_ICON = DATA_ROOT / "ferplus" / "data" / "FER2013Test" / "fer0033120.png"


def trained(tmp_path_factory, name: str, overrides: list[str]) -> Path:
    folder = tmp_path_factory.mktemp(name)
    cfg = compose_cfg("train", [*overrides, *SHORT], folder / "run", folder / "cache")
    train(cfg)
    return folder / "run"


def predict_cfg(tmp_path: Path, **kw):
    args = [f"{k}={v}" for k, v in kw.items()]
    return compose_cfg("predict", args, tmp_path / "p", tmp_path / "cache")


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def landmark_run(tmp_path_factory):
    return trained(tmp_path_factory, "lm", [*TINY_CXR, "model=resnet18", "phase=finetune"])


@pytest.fixture(scope="module")
def xray_folder(tmp_path_factory):
    """A real X-ray, a 512 x 400 copy of it, and a file that is no image."""
    folder = tmp_path_factory.mktemp("xrays")
    source = sorted((CXR / "dataset" / "Normal").glob("*.png"))[0]
    shutil.copy(source, folder / "a_original.png")
    image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "b_resized.png"), cv2.resize(image, (512, 400), interpolation=cv2.INTER_CUBIC))
    (folder / "c_notes.txt").write_text("not an image")
    return folder


def test_landmarks_in_each_images_own_pixels(landmark_run, xray_folder, tmp_path):
    result = predict(predict_cfg(tmp_path, run_dir=landmark_run, input=xray_folder, visualize=True))
    table = {Path(r["file"]).name: r for r in rows(result["predictions_csv"])}
    assert table["c_notes.txt"]["status"] == "unreadable" and "not an image" in table["c_notes.txt"]["reason"]
    a, b = table["a_original.png"], table["b_resized.png"]
    assert (a["width"], a["height"], b["width"], b["height"]) == ("299", "299", "512", "400")
    pa = np.array([[float(a[f"x{k}"]), float(a[f"y{k}"])] for k in range(1, 16)])
    pb = np.array([[float(b[f"x{k}"]), float(b[f"y{k}"])] for k in range(1, 16)])
    # the same X-ray at another size: the same landmarks, in that image's pixels
    assert np.abs(pb / [512 / 299, 400 / 299] - pa).max() < 1.0
    assert np.abs(pb - pa).max() > 20  # (not the 299 coordinates unscaled)
    assert len(list((result["predictions_csv"].parent / "overlays").glob("*.png"))) == 2
    # the input folder is untouched
    assert sorted(p.name for p in xray_folder.iterdir()) == ["a_original.png", "b_resized.png", "c_notes.txt"]


def test_landmark_onnx_export_matches_torch_and_ensemble_averages(landmark_run, xray_folder, tmp_path):
    constants = export_onnx(landmark_run)
    assert (landmark_run / "export" / "model.onnx").is_file() and constants["flip_pairs"][0] == [3, 4]
    assert constants["input_size"] == 64 and len(constants["landmark_names"]) == 15
    eager = predict(predict_cfg(tmp_path / "t", run_dir=landmark_run, input=xray_folder, tta=True))["predictions"]
    onnx = predict(predict_cfg(tmp_path / "o", run_dir=landmark_run, input=xray_folder, tta=True, engine="onnx"))["predictions"]
    assert (eager - onnx).abs().max() < 1e-4  # px
    sweep = tmp_path / "sweep"
    for k in range(2):  # two copies of one member: their mean is that member's prediction
        shutil.copytree(landmark_run, sweep / f"{k}-member", ignore=shutil.ignore_patterns("predictions", "export"))
    mean = predict(predict_cfg(tmp_path / "e", ensemble=sweep, input=xray_folder, tta=True))["predictions"]
    assert torch.allclose(mean, eager, atol=1e-4)


@pytest.fixture(scope="module")
def jaffe_run(tmp_path_factory):
    return trained(tmp_path_factory, "jaffe", ["experiment=jaffe_expression", "model=resnet18", "data.prepare.limit=60", "data.n_folds=3",
                                                "data.prepare.pipeline.crop_resize.size=64", "data.input_size=64",
                                                "callbacks.progress=null", "trainer.enable_model_summary=false"])


def test_expression_rows_per_face_with_statuses_and_onnx(jaffe_run, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted(JAFFE.glob("*.tiff"))[50], folder / "face.tiff")
    shutil.copy(FER_ICON, folder / "icon.png")  # an icon, no face
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = predict(predict_cfg(tmp_path, run_dir=jaffe_run, input=folder))
    table = {Path(r["file"]).name: r for r in rows(result["predictions_csv"])}
    assert table["icon.png"]["status"] == "no_face" and table["broken.jpg"]["status"] == "unreadable"
    face = table["face.tiff"]
    classes = ["NE", "HA", "SA", "SU", "AN", "DI", "FE"]
    probs = np.array([float(face[f"p_{c}"]) for c in classes])
    assert face["status"] == "ok" and face["face_index"] == "0" and probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert face["predicted"] == classes[int(probs.argmax())] and float(face["box_x2"]) > float(face["box_x1"])
    # a rerun on the same input only loads the pipeline's caches
    calls = []
    for name, spec in list(faces.STAGES.items()):  # same code fingerprint: only the calls are recorded
        monkeypatch.setitem(faces.STAGES, name, replace(spec, fn=lambda s, p, f, fn=spec.fn, name=name: calls.append(name) or fn(s, p, f)))
    again = predict(predict_cfg(tmp_path, run_dir=jaffe_run, input=folder))
    assert calls == [] and torch.equal(again["predictions"], result["predictions"])
    export_onnx(jaffe_run)
    onnx = predict(predict_cfg(tmp_path, run_dir=jaffe_run, input=folder, engine="onnx"))["predictions"]
    assert onnx.shape == (1, 7) and (onnx - result["predictions"]).abs().max() < 1e-5


def test_distribution_prediction_on_faces(tmp_path_factory, tmp_path):
    run = trained(tmp_path_factory, "fer", ["experiment=ferplus_distribution", "data.prepare.limit_per_split={train:64,val:16,test:16}",
                                            "data.input_size=48", "data.batch_size=16", "callbacks.progress=null",
                                            "trainer.enable_model_summary=false"])
    folder = tmp_path / "faces"
    folder.mkdir()
    for path in sorted((DATA_ROOT / "ferplus" / "data" / "FER2013Valid").glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    result = predict(predict_cfg(tmp_path, run_dir=run, input=folder))
    table = rows(result["predictions_csv"])
    assert len(table) == 3 and result["predictions"].shape[0] == 3
    classes = [k[2:] for k in table[0] if k.startswith("p_")]
    for r in table:
        p = np.array([float(r[f"p_{c}"]) for c in classes])
        assert r["status"] == "ok" and p.sum() == pytest.approx(1.0, abs=1e-4) and r["majority"] == classes[int(p.argmax())]


def test_bad_input_is_a_clear_error(landmark_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_inputs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no files"):
        list_inputs(tmp_path / "empty")
    xray = sorted((CXR / "dataset" / "Normal").glob("*.png"))[0]
    with pytest.raises(ValueError, match="exactly one of run_dir"):
        predict(predict_cfg(tmp_path, input=xray))
    with pytest.raises(FileNotFoundError, match="export.py"):
        predict(predict_cfg(tmp_path, run_dir=landmark_run, input=xray, engine="onnx", onnx_path=tmp_path / "missing.onnx"))


# ---- reliability: inputs, run folders from elsewhere, outputs (README, "Reliability") -------------------
def test_a_rotated_phone_photo_gives_the_upright_files_prediction(jaffe_run, tmp_path):
    from tests.test_reliability import rotated_copy

    folder = tmp_path / "photos"
    folder.mkdir()
    upright = sorted(JAFFE.glob("*.tiff"))[50]
    shutil.copy(upright, folder / "upright.tiff")
    rotated_copy(upright, folder / "portrait.png")  # stored sideways, EXIF Orientation 6
    table = {Path(r["file"]).name: r for r in rows(predict(predict_cfg(tmp_path, run_dir=jaffe_run, input=folder))["predictions_csv"])}
    a, b = table["upright.tiff"], table["portrait.png"]
    assert a["status"] == b["status"] == "ok"
    for key in ["box_x1", "box_y1", "box_x2", "box_y2"] + [k for k in a if k.startswith("p_")]:
        assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4), key


def test_a_single_input_file_is_that_file_not_a_pattern(jaffe_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    faces_ = sorted(JAFFE.glob("*.tiff"))
    shutil.copy(faces_[10], folder / "face[1].tiff")  # `[1]` is a glob class that matches "face1.tiff"
    shutil.copy(faces_[80], folder / "face1.tiff")
    # quoted, as on a command line: input="'face[1].tiff'"
    result = predict(predict_cfg(tmp_path, run_dir=jaffe_run, input=f"'{folder / 'face[1].tiff'}'"))
    assert [Path(r["file"]).name for r in rows(result["predictions_csv"])] == ["face[1].tiff"]


def test_predictions_of_same_named_inputs_and_overlays_never_collide(landmark_run, tmp_path):
    xray = sorted((CXR / "dataset" / "Normal").glob("*.png"))[0]
    for sub in ("a", "b"):
        (tmp_path / sub / "scans" / "nested").mkdir(parents=True)
        shutil.copy(xray, tmp_path / sub / "scans" / "x.png")
        cv2.imwrite(str(tmp_path / sub / "scans" / "x.jpg"), cv2.imread(str(xray)))
        shutil.copy(xray, tmp_path / sub / "scans" / "nested" / "x.png")
    out_a = predict(predict_cfg(tmp_path, run_dir=landmark_run, input=tmp_path / "a" / "scans", visualize=True))["predictions_csv"]
    out_b = predict(predict_cfg(tmp_path, run_dir=landmark_run, input=tmp_path / "b" / "scans"))["predictions_csv"]
    assert out_a.parent != out_b.parent and out_a.parent.parent == out_b.parent.parent == landmark_run / "predictions"
    overlays = sorted(str(p.relative_to(out_a.parent / "overlays")) for p in (out_a.parent / "overlays").rglob("*.png"))
    assert overlays == ["nested/x.png_landmarks.png", "x.jpg_landmarks.png", "x.png_landmarks.png"]


def test_a_file_name_that_is_not_utf8_is_predicted_and_listed(landmark_run, tmp_path):
    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    shutil.copy(sorted((CXR / "dataset" / "Normal").glob("*.png"))[0], folder / name)
    result = predict(predict_cfg(tmp_path, run_dir=landmark_run, input=folder))
    assert b"caf\xe9.png" in result["predictions_csv"].read_bytes() and result["predicted"] == 1


def crafted_copy(run: Path, folder: Path, key: str, node: dict) -> Path:
    """A copy of a real run folder whose config_resolved.yaml has `node` put at `key`."""
    from omegaconf import OmegaConf

    copy = folder / "crafted-run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("predictions", "export", "evaluation*"))
    cfg = OmegaConf.load(copy / "config_resolved.yaml")
    OmegaConf.update(cfg, key, node, force_add=True)
    (copy / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg))
    return copy


@pytest.mark.parametrize("key,node", [
    ("loss", {"_target_": "os.system", "_args_": ["touch MARKER"]}),
    ("task.module.loss_helper", {"_target_": "studykit.utils.io.atomic_write_text", "path": "MARKER", "text": "x"}),
], ids=["os.system", "project-helper-function"])
def test_a_run_folder_from_elsewhere_cannot_run_code(landmark_run, tmp_path, key, node):
    from studykit.evaluation.runner import evaluate
    from studykit.utils.trust import UntrustedTargetError

    marker = tmp_path / "pwned"
    node = {k: ([str(a).replace("MARKER", str(marker)) for a in v] if isinstance(v, list) else str(v).replace("MARKER", str(marker)))
            for k, v in node.items()}
    run = crafted_copy(landmark_run, tmp_path, key, node)
    xray = sorted((CXR / "dataset" / "Normal").glob("*.png"))[0]
    with pytest.raises(UntrustedTargetError, match=f"{key}._target_: '{node['_target_']}'"):
        evaluate(compose_cfg("evaluate", [f"run_dir={run}"], tmp_path / "ev", tmp_path / "cache"))
    with pytest.raises(UntrustedTargetError):
        predict(predict_cfg(tmp_path, run_dir=run, input=xray))
    with pytest.raises(UntrustedTargetError):
        export_onnx(run)
    assert not marker.exists()


def test_trusted_targets_admit_ones_own_code(landmark_run, tmp_path):
    from studykit.utils import trust

    run = crafted_copy(landmark_run, tmp_path, "notes", {"_target_": "tests.helpers.OutOfMemoryLoss", "why": "a user's own class, never built"})
    xray = sorted((CXR / "dataset" / "Normal").glob("*.png"))[0]
    with pytest.raises(trust.UntrustedTargetError, match="trusted_targets"):
        predict(predict_cfg(tmp_path, run_dir=run, input=xray))
    try:
        result = predict(predict_cfg(tmp_path, run_dir=run, input=xray, trusted_targets="[tests.]"))
        assert result["predicted"] == 1
    finally:
        trust._USER_PREFIXES.discard("tests.")


def test_a_trained_run_never_reads_its_pretrained_source(tmp_path_factory, xray_folder, tmp_path):
    """A run started from a weights file (as a JAFFE run starts from a FER+ run) keeps working when that file
    is gone; a run started from the hub loads offline."""
    from omegaconf import OmegaConf

    from studykit.evaluation.runner import evaluate
    from studykit.models.backbones import create_backbone

    weights = tmp_path / "start.pt"
    torch.save(create_backbone("resnet18").state_dict(), weights)
    run = trained(tmp_path_factory, "from-file", [*TINY_CXR, "model=resnet18", "phase=finetune",
                                                  "model.backbone.pretrained.source=file", f"model.backbone.pretrained.path={weights}"])
    weights.unlink()
    report = evaluate(compose_cfg("evaluate", [f"run_dir={run}"], tmp_path / "ev", tmp_path / "cache"))
    assert report["mean_px"] == pytest.approx(json_report(run)["mean_px"], rel=1e-5)
    assert predict(predict_cfg(tmp_path, run_dir=run, input=xray_folder))["predicted"] == 2
    export_onnx(run)
    cfg = OmegaConf.load(run / "config_resolved.yaml")
    cfg.task.module.backbone.pretrained = {"source": "hub"}  # would download from the hub: there is no network here
    (run / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert predict(predict_cfg(tmp_path / "hub", run_dir=run, input=xray_folder))["predicted"] == 2


def json_report(run: Path) -> dict:
    return json.loads((run / "test_report.json").read_text())


def test_predict_and_export_never_write_inside_the_data_root(landmark_run, xray_folder, tmp_path):
    from studykit.utils import io as sio

    data = tmp_path / "data"
    data.mkdir()
    try:
        cfg = predict_cfg(tmp_path, run_dir=landmark_run, input=xray_folder, predict_dir=data / "predictions")
        cfg.paths.data_root = str(data)
        with pytest.raises(PermissionError, match="read-only data root"):
            predict(cfg)
        with pytest.raises(PermissionError, match="read-only data root"):
            export_onnx(landmark_run, data / "export", data_root=data)
        assert list(data.iterdir()) == []
        with pytest.raises(ValueError, match="inside the input folder"):
            predict(predict_cfg(tmp_path, run_dir=landmark_run, input=xray_folder, predict_dir=xray_folder / "out"))
    finally:
        sio._READ_ONLY_ROOTS.discard(data.resolve())
