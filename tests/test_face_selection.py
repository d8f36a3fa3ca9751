"""The face pipeline on real AFW photos with human 68-point annotations: which face is kept, every face as
its own row, the MTCNN -> dlib box mapping, and the landmark error bound."""

import numpy as np
import pytest
import torch

from studykit.data.face_sources import preprocess
from studykit.preprocessing.detection import select_faces
from studykit.preprocessing.dlib68 import fit_box_mapping, iou, map_box, predictor_box
from tests.conftest import DATA_ROOT, compose_cfg

AFW = DATA_ROOT / "face_landmarks_68" / "afw_300w"
# 1130084326: three annotated faces in one photo; 1051618982: one annotated face among two MTCNN faces
MULTI, SINGLE = "1130084326", "1051618982"


def annotated(photo: str) -> list[np.ndarray]:
    return [np.loadtxt(p).reshape(68, 2) - 1.0 for p in sorted(AFW.glob(f"{photo}_*.pts"))]


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


@pytest.fixture(scope="module")
def afw_state(tmp_path_factory):
    """The pipeline, every face kept, on copies of two AFW photos (one per photo, not one per face)."""
    import shutil

    folder = tmp_path_factory.mktemp("afw")
    for photo in (MULTI, SINGLE):
        shutil.copy(AFW / f"{photo}_1.jpg", folder / f"{photo}.jpg")
    tmp = tmp_path_factory.mktemp("run")
    cfg = compose_cfg("preprocess", ["data=jaffe", f"data.root={folder}", "data.prepare.pattern=*.jpg", "data.prepare.labels_from=null",
                                     "data.prepare.pipeline.mtcnn_boxes.select=all",
                                     "data.prepare.pipeline.crop_resize.size=64", "data.prepare.pipeline.four_channel.sigma=1.0"],
                      tmp / "out", tmp / "cache")
    state, _ = preprocess(cfg)
    return state, tmp / "cache"


def test_every_face_is_a_row_and_the_annotated_faces_are_found_with_small_error(afw_state):
    state, cache = afw_state
    rows = [i for i, p in enumerate(state["paths"]) if p.endswith(f"{MULTI}.jpg")]
    assert len(rows) >= 3 and [int(state["face_index"][i]) for i in rows] == list(range(len(rows)))
    assert len({int(state["source_row"][i]) for i in rows}) == 1
    probs = [float(state["box_prob"][i]) for i in rows]
    assert probs == sorted(probs, reverse=True)  # most confident first
    for truth in annotated(MULTI):  # each annotated face has its own row, with its landmarks close to the human ones
        target = np.array([*truth.min(0), *truth.max(0)])
        row = max(rows, key=lambda i: iou(state["boxes"][i].numpy(), target))
        assert iou(state["boxes"][row].numpy(), target) > 0.3
        assert nme(state["landmarks"][row].numpy(), truth) < 0.08
    # one tensor row per face, in the crops and in results.csv with the face index
    assert state["four_channel"].shape[0] == len(state["kept"]) == sum(s == "ok" for s in state["status"])
    lines = next(cache.glob("faces/jaffe/landmarks/*/results.csv")).read_text().splitlines()
    assert lines[0].startswith("path,face_index,") and len(lines) == 1 + len(state["paths"])
    assert sum(f"{MULTI}.jpg,2," in line for line in lines) == 1


def test_one_face_policies_choose_the_annotated_face():
    """On SINGLE, MTCNN also finds a second, smaller face; each policy's choice, and whether it is the annotated one."""
    from facenet_pytorch import MTCNN

    from studykit.data.images import read_rgb
    from studykit.preprocessing.detection import mtcnn_detect

    image = read_rgb(AFW / f"{SINGLE}_1.jpg")
    boxes, probs = mtcnn_detect(MTCNN(keep_all=True, device="cpu"), image)
    assert len(boxes) >= 2
    truth = annotated(SINGLE)[0]
    target = np.array([*truth.min(0), *truth.max(0)])
    for policy in ("most_confident", "largest", "prob_area"):
        (chosen,) = select_faces(boxes, probs, image.shape[1], image.shape[0], policy)
        assert iou(boxes[chosen], target) > 0.3, policy
    assert sorted(select_faces(boxes, probs, image.shape[1], image.shape[0], "all")) == list(range(len(boxes)))
    with pytest.raises(ValueError, match="'biggest'"):
        select_faces(boxes, probs, 10, 10, "biggest")


def test_policies_on_synthetic_boxes():
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [70, 0, 100, 30]], dtype=np.float32)
    probs = np.array([0.99, 0.95, 0.90])
    assert select_faces(boxes, probs, 100, 100, "most_confident") == [0]
    assert select_faces(boxes, probs, 100, 100, "largest") == [2]
    assert select_faces(boxes, probs, 100, 100, "most_central") == [1]
    assert select_faces(boxes, probs, 100, 100, "prob_area") == [2]
    assert select_faces(boxes, probs, 100, 100, "all") == [0, 1, 2]


def test_box_mapping_fits_and_inverts_a_known_transform():
    rng = np.random.default_rng(0)
    mtcnn = np.concatenate([rng.uniform(0, 200, (20, 2)), np.zeros((20, 2))], 1)
    mtcnn[:, 2:] = mtcnn[:, :2] + rng.uniform(40, 120, (20, 2))
    truth = {"dx": 0.02, "dy": 0.08, "sw": 1.1, "sh": 0.8}
    dlib_boxes = np.stack([map_box(b, truth) for b in mtcnn])
    fitted = fit_box_mapping(mtcnn, dlib_boxes)
    assert fitted == pytest.approx(truth, abs=1e-5)
    # refine: dlib's overlapping detection wins; else the fallback, mapped or raw
    box = mtcnn[0].astype(np.float32)
    near = map_box(box, truth)
    assert predictor_box(box, [near], "refine", "mapped", truth)[1] == "dlib"
    far = near + 500
    mapped, source = predictor_box(box, [far], "refine", "mapped", truth)
    assert source == "mapped" and np.allclose(mapped, near)
    assert predictor_box(box, [far], "refine", "mtcnn", truth)[1] == "mtcnn"
    with pytest.raises(ValueError, match="box_mapping"):
        predictor_box(box, [], "mapped", "mapped", None)
    with pytest.raises(ValueError):
        fit_box_mapping(np.zeros((0, 4)), np.zeros((0, 4)))


def test_landmark_image_choice_and_cache_keys(tmp_path):
    """`landmarks.image` picks raw or enhanced pixels; changing it rebuilds the landmark stage only."""
    base = ["data=jaffe", "data.prepare.limit=2", "data.prepare.pipeline.crop_resize.size=64"]
    state_raw, _ = preprocess(compose_cfg("preprocess", base, tmp_path / "o", tmp_path / "c"))
    state_enh, runs = preprocess(compose_cfg("preprocess", [*base, "data.prepare.pipeline.landmarks.image=enhanced"], tmp_path / "o", tmp_path / "c"))
    assert [r.hit for r in runs] == [True, True, True, False, False, False]
    assert not torch.equal(state_raw["landmarks"], state_enh["landmarks"])
    # the classifier still sees the enhanced faces either way
    assert torch.equal(state_raw["face_images"], state_enh["face_images"])
    assert state_raw["box_source"] == ["dlib", "dlib"]
