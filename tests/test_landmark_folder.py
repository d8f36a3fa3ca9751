"""Landmark data sets from a folder (csv, pts, coco) on real images: parsing, bad rows recorded, crops, NME,
splits, and the X-ray set expressed through conf/data/landmark_folder.yaml giving data=cxr_landmarks' numbers."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from studykit.builders import build_datamodule
from studykit.data.base import cut_splits
from studykit.data.cache import load_cached
from studykit.data.images import crop_square, from_crop, points_square, to_crop
from studykit.data.landmark_folder import prepare_landmark_folder
from studykit.metrics.landmark import nme_report, normalized_errors
from studykit.training.run import train
from tests.conftest import DATA_ROOT, SPLITS, compose_cfg

FACES = DATA_ROOT / "face_landmarks_68"


def copy_faces(folder, source: str, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for pts in sorted((FACES / source).glob("*.pts"))[:n]:
        shutil.copy(pts, folder)
        shutil.copy(pts.with_suffix(".jpg"), folder)
        names.append(pts.stem)
    return names


def points_of(pts_file) -> np.ndarray:
    return np.asarray(pts_file.read_text().split(), dtype=np.float32).reshape(68, 2)


def test_pts_folder_records_bad_files_and_keeps_photo_pixels(tmp_path):
    root = tmp_path / "faces"
    names = copy_faces(root / "imgs", "helen_train_crops", 5)
    (root / "imgs" / names[1]).with_suffix(".pts").write_text("1 2\n3 4\n")                 # too few points
    (root / "imgs" / names[2]).with_suffix(".pts").unlink()                                  # no .pts: not a sample
    shutil.copy((root / "imgs" / names[3]).with_suffix(".jpg"), root / "imgs" / "extra.jpg")
    lines = (root / "imgs" / names[3]).with_suffix(".pts").read_text().split("\n")
    (root / "imgs" / "extra.pts").write_text("version: 1\nn_points: 68\n{\n" + "\n".join(lines) + "\n}\n")  # 300-W header
    (root / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "imgs" / "broken.pts").write_text((root / "imgs" / names[0]).with_suffix(".pts").read_text())
    status = prepare_landmark_folder(root, tmp_path / "cache", format="pts", num_landmarks=68, images="imgs", one_based=True,
                                     image_size=64, crop={"scale": 1.3})
    tensors = load_cached(status.path, "all.pt")
    report = json.loads((status.path / "report.json").read_text())
    reasons = {i["file"].rsplit("/", 1)[-1]: i["reason"] for i in report["issues"]}
    assert "expected 68 x/y pairs" in reasons[f"{names[1]}.pts"] and "broken.jpg" in reasons
    assert sorted(tensors["image_id"]) == sorted([f"{names[0]}.jpg", f"{names[3]}.jpg", f"{names[4]}.jpg", "extra.jpg"])
    assert f"imgs/{names[2]}.jpg" in report["unannotated_images"]
    # the stored points map back to the annotation in photo pixels (0-based), through the crop
    k = tensors["image_id"].index(f"{names[0]}.jpg")
    truth = points_of((root / "imgs" / names[0]).with_suffix(".pts")) - 1
    x0, y0, side = points_square(truth, 1.3)
    assert tensors["orig_size"][k].tolist() == pytest.approx([side, side], abs=1e-3)
    assert np.allclose(from_crop(tensors["landmarks"][k].numpy(), x0, y0, side, 64), truth, atol=1e-3)
    # and the evaluation's photo pixels (stored / size * orig_size + offset) are the annotation's
    photo = tensors["landmarks"][k] / 64 * tensors["orig_size"][k] + tensors["offset"][k]
    assert np.allclose(photo.numpy(), truth, atol=1e-3)
    # the header-wrapped copy reads the same points
    j = tensors["image_id"].index("extra.jpg")
    assert torch.allclose(tensors["landmarks"][j], tensors["landmarks"][tensors["image_id"].index(f"{names[3]}.jpg")])


def test_crop_maps_points_with_the_pixels():
    image = np.zeros((100, 120), np.uint8)
    image[40, 70] = 255
    x0, y0, side = 50.0, 20.0, 40.0
    crop = crop_square(image, x0, y0, side, 80)
    y, x = np.unravel_index(np.argmax(crop), crop.shape)
    assert np.allclose(to_crop(np.array([[70.0, 40.0]]), x0, y0, side, 80), [[x, y]], atol=0.6)
    assert np.allclose(from_crop(to_crop(np.array([[70.0, 40.0]]), x0, y0, side, 80), x0, y0, side, 80), [[70, 40]], atol=1e-4)
    assert crop_square(image, -30, -30, 40, 16)[:5, :5].max() == 0  # beyond the photo: black


def test_csv_with_header_and_coco_read_the_same_faces(tmp_path):
    root = tmp_path / "set"
    names = copy_faces(root / "images", "afw_300w", 4)
    points = {n: points_of(root / "images" / f"{n}.pts") for n in names}
    header = "file," + ",".join(f"{a}{i}" for i in range(1, 69) for a in "xy")
    rows = [f"{n}.jpg," + ",".join((root / "images" / f"{n}.pts").read_text().split()) for n in names]  # the numbers as written
    rows.append("nowhere.jpg," + rows[0].split(",", 1)[1])          # image missing
    rows.append(f"{names[0]}.jpg,1,2,3")                              # too few columns
    (root / "points.csv").write_text("\n".join([header, *rows]) + "\n")
    coco = {"images": [{"id": i, "file_name": f"{n}.jpg"} for i, n in enumerate(names)],
            "annotations": [{"id": i, "image_id": i, "keypoints": [c for x, y in points[n].astype(float) for c in (x, y, 2)]}
                            for i, n in enumerate(names)]}
    coco["annotations"][1]["keypoints"][2] = 0                        # an unlabelled point
    coco["annotations"].append({"id": 9, "image_id": 77, "keypoints": coco["annotations"][0]["keypoints"]})  # unknown image
    (root / "points.json").write_text(json.dumps(coco))
    common = dict(num_landmarks=68, images="images", image_size=64, crop={"scale": 1.2}, one_based=True)
    from_csv = prepare_landmark_folder(root, tmp_path / "c1", format="csv", annotations="points.csv",
                                       csv_options={"image_column": "file", "first_x_column": "x1"}, **common)
    from_coco = prepare_landmark_folder(root, tmp_path / "c2", format="coco", annotations="points.json", **common)
    a, b = load_cached(from_csv.path, "all.pt"), load_cached(from_coco.path, "all.pt")
    csv_issues = json.loads((from_csv.path / "report.json").read_text())["issues"]
    coco_issues = json.loads((from_coco.path / "report.json").read_text())["issues"]
    assert [i["line"] for i in csv_issues] == [6, 7] and "not found" in csv_issues[0]["reason"]
    assert len(coco_issues) == 2 and "unlabelled" in coco_issues[0]["reason"] and "image_id 77" in coco_issues[1]["reason"]
    assert a["image_id"] == [f"{n}.jpg" for n in names] and b["image_id"] == [f"{n}.jpg" for i, n in enumerate(names) if i != 1]
    keep = [0, 2, 3]
    assert torch.allclose(a["landmarks"][keep], b["landmarks"], atol=1e-3) and torch.equal(a["images"][keep], b["images"])


def test_splits_random_folds_and_carved_validation():
    n = 40
    tensors = {"images": torch.zeros(n, 4, 4, dtype=torch.uint8), "landmarks": torch.zeros(n, 2, 2), "image_id": [f"i{k}" for k in range(n)],
               "group": [f"g{k // 2}" for k in range(n)], "split": ["train"] * 30 + ["test"] * 10, "categories": ["all"]}
    given = cut_splits(tensors, "given", 0, 5, 0.2, 0.0, 0, "t")
    assert len(given["test"]["image_id"]) == 10 and len(given["val"]["image_id"]) == 6 and len(given["train"]["image_id"]) == 24
    tested = []
    for fold in range(4):
        cut = cut_splits(tensors, "folds", fold, 4, 0, 0, 3, "t")
        ids = {s: set(cut[s]["image_id"]) for s in cut}
        assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"]) and not (ids["train"] & ids["val"])
        groups = {s: {tensors["group"][int(i[1:])] for i in ids[s]} for s in ids}
        assert not (groups["train"] & groups["test"])  # both images of a group in one split
        tested += cut["test"]["image_id"]
    assert sorted(tested) == sorted(tensors["image_id"])  # every sample tested exactly once over the folds
    with pytest.raises(ValueError, match="at least 2"):
        cut_splits(tensors, "folds", 0, 1, 0, 0, 3, "t")
    with pytest.raises(ValueError, match="outside 0..3"):
        cut_splits(tensors, "folds", 4, 4, 0, 0, 3, "t")
    unsplit = {**tensors, "split": [""] * n}
    with pytest.raises(ValueError, match="split_by=given"):
        cut_splits(unsplit, "given", 0, 5, 0.1, 0.1, 0, "t")
    rnd = cut_splits(unsplit, "random", 0, 5, 0.2, 0.2, 1, "t")
    assert sum(len(rnd[s]["image_id"]) for s in rnd) == n and len(rnd["test"]["image_id"]) == 8


def test_nme_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 200, (7, 68, 2)).astype(np.float32)
    pred = target + rng.normal(0, 3, target.shape).astype(np.float32)
    reference = np.linalg.norm(pred - target, axis=-1).mean(-1) / np.linalg.norm(target[:, 36] - target[:, 45], axis=-1)
    nme = normalized_errors(torch.from_numpy(pred), torch.from_numpy(target), (37, 46))
    assert np.allclose(nme.numpy(), reference, rtol=1e-5)
    report = nme_report(nme, ["L37", "L46"], 0.08)
    assert report["failures"] == int((reference > 0.08).sum()) and report["mean"] == pytest.approx(reference.mean(), rel=1e-5)


def test_xray_set_through_the_folder_yaml_gives_the_same_numbers(cxr_root, tmp_path):
    """A copy of a few real X-rays, read by data=cxr_landmarks and by data=landmark_folder (csv without header,
    names without suffix found under their class folders): equal tensors, then equal training and test numbers."""
    root = tmp_path / "cxr"
    for split, rel in SPLITS.items():
        rows = (cxr_root / rel).read_text().splitlines()[: {"train": 8, "val": 4, "test": 4}[split]]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n".join(rows) + "\n")
        for r in rows:
            image_id = r.split(",")[-1]
            folder = image_id.rsplit("-", 1)[0].replace(" ", "_")
            (root / "dataset" / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(cxr_root / "dataset" / folder / f"{image_id}.png", root / "dataset" / folder)
    tiny = ["model=efficientnet_lite0", "model/head=heatmap", "phase=warmup_cosine", "phase.stages.finetune.epochs=1", "data.input_size=64",
            "data.batch_size=4", "callbacks.progress=null", "trainer.enable_model_summary=false", "seed=3"]
    folder_overrides = ["data=landmark_folder", "loss=complete", f"data.root={root}", "data.prepare.format=csv", "data.prepare.images=dataset",
                        "data.prepare.annotations={train:" + SPLITS["train"] + ",val:" + SPLITS["val"] + ",test:" + SPLITS["test"] + "}",
                        "data.prepare.csv_options.header=false", "data.prepare.csv_options.image_column=-1",
                        "data.prepare.num_landmarks=15", "data.prepare.categories=[COVID,Normal,Viral_Pneumonia]",
                        "data.prepare.category_from=folder", "data.prepare.image_size=299", "data.val_fraction=0",
                        "data.flip_pairs=[[3,4],[5,6],[7,8],[12,13],[14,15]]",
                        "data.augment={hflip_p:0.5,rotate_limit:15,rotate_p:0.5,translate:0,brightness:0.4,contrast:0.4,brightness_contrast_p:0.5}",
                        "data.batch_size=4"]
    reports = {}
    for name, overrides in {"cxr": ["data=cxr_landmarks", f"data.root={root}"], "folder": folder_overrides}.items():
        cfg = compose_cfg("train", [*overrides, *tiny], tmp_path / f"run-{name}", tmp_path / f"cache-{name}")
        dm = build_datamodule(cfg)
        dm.prepare_data()
        reports[name] = {"splits": {s: dm.load_split(s) for s in ("train", "val", "test")}}
        train(cfg)
        reports[name]["test"] = json.loads((tmp_path / f"run-{name}" / "test_report.json").read_text())
    for split in ("train", "val", "test"):
        a, b = reports["cxr"]["splits"][split], reports["folder"]["splits"][split]
        assert a["image_id"] == b["image_id"] and len(a["image_id"]) == {"train": 8, "val": 4, "test": 4}[split]
        for key in ("images", "landmarks", "orig_size", "category"):
            assert torch.equal(a[key], b[key]), (split, key)
    numbers = ("mean_px", "median_px", "std_px", "min_px", "max_px", "per_landmark", "per_category")
    assert {k: reports["cxr"]["test"][k] for k in numbers} == {k: reports["folder"]["test"][k] for k in numbers}


def test_a_trained_face_run_serves_as_the_pipeline_landmark_stage(tmp_path):
    """A tiny experiment=face68_helen run: RunLandmarks on a test face's annotation crop gives the run's own test
    predictions (the back end and the evaluation cut the same crop), and the face pipeline's landmark stage with
    backend=run puts 68 points per MTCNN face in photo pixels, keyed by the run's weights."""
    import csv

    from studykit.data.face_sources import preprocess
    from studykit.preprocessing.landmark_run import RunLandmarks, run_fingerprint

    run = tmp_path / "face68"
    cfg = compose_cfg("train", ["experiment=face68_helen", "data.prepare.image_size=64", "data.input_size=64", "phase.stages.finetune.epochs=1",
                                "trainer.limit_train_batches=2", "callbacks.progress=null", "trainer.enable_model_summary=false"],
                      run, tmp_path / "cache")
    train(cfg)
    with open(run / "test_predictions.csv", newline="") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    model = RunLandmarks(run, passes=1)
    for name in sorted(rows)[:3]:
        truth = points_of(FACES / "helen_test_300w" / name.replace(".jpg", ".pts")) - 1
        grey = cv2.cvtColor(cv2.imread(str(FACES / "helen_test_300w" / name)), cv2.COLOR_BGR2GRAY)
        square = points_square(truth, 1.3)
        points = model.predict_square(grey, square)
        expected = np.asarray([float(rows[name][f"{a}{i}"]) for i in range(1, 69) for a in "xy"]).reshape(68, 2)
        assert np.abs(points - expected).max() < 1e-3 * square[2], name  # float32 crops of a ~500 px face

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(rows)[:2]:
        shutil.copy(FACES / "helen_test_300w" / name, photos / name)
    stage = {"backend": "run", "run": {"run_dir": str(run), "box_mapping": None, "passes": 2}}
    pcfg = compose_cfg("preprocess", ["data=jaffe", f"data.root={photos}", "data.prepare.pattern=*.jpg", "data.prepare.labels_from=null",
                                      "data.prepare.pipeline.stages=[raw_tensors,mtcnn_boxes,landmarks]",
                                      "data.prepare.pipeline.landmarks.backend=run", f"data.prepare.pipeline.landmarks.run.run_dir={run}"],
                       tmp_path / "out", tmp_path / "pcache")
    state, _ = preprocess(pcfg)
    assert state["status"] == ["ok", "ok"] and state["box_source"] == ["run", "run"]
    for i in range(2):
        x1, y1, x2, y2 = state["boxes"][i].tolist()
        pts = state["landmarks"][i]
        side = max(x2 - x1, y2 - y1)
        assert torch.isfinite(pts).all() and pts.shape == (68, 2)
        assert (pts[:, 0] > x1 - side).all() and (pts[:, 0] < x2 + side).all() and (pts[:, 1] > y1 - side).all() and (pts[:, 1] < y2 + side).all()
    assert run_fingerprint(stage)["weights_sha256"] and run_fingerprint({"backend": "dlib"}) == {}


def test_split_lists_assign_images_and_unlisted_ones_are_refused(tmp_path):
    root = tmp_path / "faces"
    names = copy_faces(root / "imgs", "helen_train_crops", 6)
    (root / "train.txt").write_text("\n".join(f"{n}.jpg" for n in names[:3]) + "\n")
    (root / "val.txt").write_text(f"# one image\n{names[3]}\n")                       # a name without its suffix
    (root / "test.txt").write_text(f"imgs/{names[4]}.jpg\n{names[5]}.jpg\nmissing.jpg\n")
    lists = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
    status = prepare_landmark_folder(root, tmp_path / "cache", format="pts", num_landmarks=68, images=".", lists=lists,
                                     one_based=True, image_size=32, crop={"scale": 1.2})
    tensors = load_cached(status.path, "all.pt")
    cut = cut_splits(tensors, "given", 0, 5, 0.1, 0.0, 0, "t")
    assert [len(cut[s]["image_id"]) for s in ("train", "val", "test")] == [3, 1, 2]
    issues = json.loads((status.path / "report.json").read_text())["issues"]
    assert len(issues) == 1 and "missing.jpg" in issues[0]["reason"] and issues[0]["split"] == "test"


def test_folders_per_split_may_list_several_folders(tmp_path):
    root = tmp_path / "faces"
    copy_faces(root / "a", "helen_train_crops", 2)
    copy_faces(root / "b", "afw_300w", 2)
    copy_faces(root / "c", "helen_test_300w", 2)
    status = prepare_landmark_folder(root, tmp_path / "cache", format="pts", num_landmarks=68, images={"train": ["a", "b"], "test": "c"},
                                     one_based=True, image_size=32, crop={"scale": 1.2})
    tensors = load_cached(status.path, "all.pt")
    assert tensors["split"] == ["train"] * 4 + ["test"] * 2
    assert sorted(g.rsplit("/", 2)[1] for g in tensors["group"]) == ["a", "a", "b", "b", "c", "c"]


def test_an_extra_training_split_leaves_train_val_and_test_as_they_were(tmp_path):
    """images {train: a, afw: b, test: c} with data.fit_splits=[train, afw]: validation is carved from `a` alone (the
    same faces as without `b`), the training set is a + b less validation, and an extra split that is not named in
    fit_splits, or named but absent from the data, is refused with the split's name."""
    root = tmp_path / "faces"
    copy_faces(root / "a", "helen_train_crops", 6)
    copy_faces(root / "b", "afw_300w", 3)
    copy_faces(root / "c", "helen_test_300w", 2)
    common = ["data=face68_helen", f"data.root={root}", "data.prepare.image_size=32", "data.input_size=32", "data.val_fraction=0.34"]
    cuts = {}
    images, with_afw = "data.prepare.images={train:a,test:c}", "+data.prepare.images.afw=b"
    for name, extra in (("plain", [images]), ("extra", [images, with_afw, "data.fit_splits=[train,afw]"])):
        cfg = compose_cfg("train", [*common, *extra], tmp_path / name, tmp_path / "cache")
        dm = build_datamodule(cfg)
        dm.setup("fit")
        cuts[name] = {s: dm.load_split(s)["image_id"] for s in ("train", "val", "test")}
        cuts[name]["fit"] = len(dm.train_set)
    assert {s: cuts["extra"][s] for s in ("train", "val", "test")} == {s: cuts["plain"][s] for s in ("train", "val", "test")}
    assert len(cuts["plain"]["val"]) == 2 and cuts["plain"]["fit"] == 4 and cuts["extra"]["fit"] == 4 + 3
    unnamed = build_datamodule(compose_cfg("train", [*common, images, with_afw], tmp_path / "u", tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"splits \['afw'\].*data.fit_splits"):
        unnamed.setup("fit")
    absent = build_datamodule(compose_cfg("train", [*common, images, "data.fit_splits=[train,afw]"], tmp_path / "m", tmp_path / "cache"))
    with pytest.raises(ValueError, match="no split 'afw'"):
        absent.setup("fit")


def test_csv_images_assigned_to_splits_by_lists(tmp_path):
    root = tmp_path / "set"
    names = copy_faces(root / "images", "afw_300w", 4)
    rows = [f"{n}.jpg," + ",".join((root / "images" / f"{n}.pts").read_text().split()) for n in names]
    (root / "points.csv").write_text("\n".join(rows) + "\n")
    (root / "train.txt").write_text(f"{names[0]}.jpg\n{names[1]}.jpg\n")
    (root / "test.txt").write_text(f"images/{names[2]}.jpg\nnowhere.jpg\n")         # a path under the root; a missing image
    status = prepare_landmark_folder(root, tmp_path / "cache", format="csv", num_landmarks=68, images="images",
                                     annotations="points.csv", lists={"train": "train.txt", "test": "test.txt"},
                                     csv_options={"header": False}, image_size=32, crop={"scale": 1.2}, one_based=True)
    tensors = load_cached(status.path, "all.pt")
    assert dict(zip(tensors["image_id"], tensors["split"])) == {f"{names[0]}.jpg": "train", f"{names[1]}.jpg": "train",
                                                                f"{names[2]}.jpg": "test", f"{names[3]}.jpg": ""}
    issues = json.loads((status.path / "report.json").read_text())["issues"]
    assert len(issues) == 1 and "nowhere.jpg" in issues[0]["reason"] and issues[0]["split"] == "test"
