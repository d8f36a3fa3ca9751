"""Any folder of images as a data set: class subfolders of real JAFFE photos, with the defects a real
folder has (an unreadable file, an empty class folder, a duplicate file name), split by subject or stratified."""

import json
import shutil
from pathlib import Path

import pytest

from studykit.builders import build_datamodule
from studykit.data.expression_datamodule import stratified_split
from studykit.training.run import train
from tests.conftest import DATA_ROOT, compose_cfg

JAFFE = DATA_ROOT / "jaffe" / "jaffe_db"
FAST_PIPELINE = ["data.prepare.pipeline.stages=[raw_tensors,mtcnn_boxes,crop_resize]",
                 "data.prepare.pipeline.crop_resize.size=64", "data.input_size=64"]


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    for expression, folder in (("HA", "happy"), ("SA", "sad"), ("NE", "neutral")):
        (root / folder).mkdir()
        for path in sorted(JAFFE.glob(f"*.{expression}*.tiff"))[::4][:6]:  # several subjects per class
            shutil.copy(path, root / folder / path.name)
    (root / "happy" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "surprised").mkdir()  # empty class folder
    twin = next((root / "happy").glob("*.tiff"))
    shutil.copy(twin, root / "sad" / twin.name)  # the same file name in two classes
    return root


def compose(root: Path, tmp: Path, extra: list[str]):
    return compose_cfg("train", ["data=image_folder", f"data.root={root}", "task=classification", "loss=ce", "model=resnet18",
                                 *FAST_PIPELINE, "callbacks.progress=null", "trainer.enable_model_summary=false", *extra],
                       tmp / "run", tmp / "cache")


def test_class_folders_with_defects_train_on_stratified_folds(class_folders, tmp_path):
    cfg = compose(class_folders, tmp_path, ["trainer.fast_dev_run=true"])
    train(cfg)
    assert list(cfg.task.module.classes) == ["happy", "neutral", "sad"] and cfg.task.module.num_classes == 3
    report = json.loads(next((tmp_path / "cache").glob("faces/image_folder/source_report.json")).read_text())
    reasons = {row["path"]: row["reason"] for row in report["excluded_rows"]}
    assert reasons["surprised/"] == "empty class folder"
    assert any(p.startswith("sad/") and "duplicate file name" in r for p, r in reasons.items())
    results = next((tmp_path / "cache").glob("faces/image_folder/raw_tensors/*/raw_tensors.pt"))
    assert results.is_file()
    dm = build_datamodule(cfg)
    dm.prepare_data()
    sizes = {s: len(dm.load_split(s)["labels"]) for s in ("train", "val", "test")}
    assert sizes["train"] > sizes["val"] > 0 and sizes["test"] > 0
    ids = [i for s in ("train", "val", "test") for i in dm.load_split(s)["image_id"]]
    assert len(ids) == len(set(ids)) and "broken.png" not in ids  # unreadable: recorded, not in any split


def test_subject_regex_gives_subject_independent_folds(class_folders, tmp_path):
    cfg = compose(class_folders, tmp_path, ["data.split_by=subject", "data.n_folds=3", r"data.prepare.subject_regex='^([A-Z]{2})\.'"])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    subjects = {s: set(dm.load_split(s)["subjects"]) for s in ("train", "val", "test")}
    assert all(subjects.values()) and not (subjects["train"] & subjects["test"]) and not (subjects["val"] & subjects["test"])
    report = json.loads(next((tmp_path / "cache").glob("faces/image_folder/source_report.json")).read_text())
    assert any("does not match subject_regex" in row["reason"] for row in report["excluded_rows"])  # broken.png


def test_stratified_split_keeps_photos_together_and_is_seeded():
    photos = [f"p{i}" for i in range(20) for _ in range(2)]  # two faces per photo
    labels = ["a" if i < 10 else "b" for i in range(20) for _ in range(2)]
    split = stratified_split(photos, labels, 0.2, 0.2, seed=3)
    assert set(split) == set(photos)
    for label in "ab":
        counts = {s: sum(1 for p, v in split.items() if v == s and labels[photos.index(p)] == label) for s in ("train", "val", "test")}
        assert counts == {"train": 6, "val": 2, "test": 2}
    assert split == stratified_split(photos, labels, 0.2, 0.2, seed=3) != stratified_split(photos, labels, 0.2, 0.2, seed=4)
    with pytest.raises(ValueError, match="below 1"):
        stratified_split(photos, labels, 0.6, 0.5, seed=0)
