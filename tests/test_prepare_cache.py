"""Preparation cache: hit, invalidation, bad rows and files recorded, interrupted builds never trusted."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from studykit.data.cache import cached_build, manifest_problem
from studykit.data.cxr_landmarks import prepare_cxr_landmarks
from studykit.utils.io import config_hash, safe_torch_load
from tests.conftest import SPLITS, TINY


def prepare(root, cache, **kw):
    args = dict(splits=SPLITS, image_size=64, limit_per_split=TINY)
    args.update(kw)
    return prepare_cxr_landmarks(root, cache, **args)


def test_real_subset_cached_and_reused(cxr_root, tmp_path):
    first = prepare(cxr_root, tmp_path)
    assert not first.hit
    train = safe_torch_load(first.path / "train.pt")
    assert train["images"].shape == (6, 64, 64) and train["images"].dtype == torch.uint8
    assert train["landmarks"].shape == (6, 15, 2)
    assert train["orig_size"].tolist() == [[299.0, 299.0]] * 6
    # landmarks scaled with the image: compare with the CSV's first row
    row = (cxr_root / SPLITS["train"]).read_text().splitlines()[0].split(",")
    xy = np.asarray(row[1:31], dtype=np.float32).reshape(15, 2) * 64 / 299
    assert np.allclose(train["landmarks"][0].numpy(), xy, atol=1e-4)
    assert train["image_id"][0] == row[-1]
    report = json.loads((first.path / "report.json").read_text())
    # the data set's known defect: 42 PNGs without an annotation row are listed, not silently dropped
    assert len(report["unannotated_images"]) == 42
    assert report["splits"]["train"] == {"kept": 6, "skipped": 0}

    again = prepare(cxr_root, tmp_path)
    assert again.hit and again.path == first.path
    changed = prepare(cxr_root, tmp_path, clahe={"enabled": True, "clip_limit": 2.0, "tile_grid": 8})
    assert not changed.hit and changed.path != first.path
    resized = prepare(cxr_root, tmp_path, image_size=48)
    assert not resized.hit and safe_torch_load(resized.path / "val.pt")["images"].shape[1:] == (48, 48)
    # CLAHE changes the pixels
    a = safe_torch_load(first.path / "train.pt")["images"].float()
    b = safe_torch_load(changed.path / "train.pt")["images"].float()
    assert (a - b).abs().mean() > 1.0


def test_bad_rows_and_files_are_recorded_not_fatal(broken_root, tmp_path):
    status = prepare(broken_root, tmp_path / "cache", limit_per_split=None)
    report = json.loads((status.path / "report.json").read_text())
    assert report["splits"]["train"] == {"kept": 3, "skipped": 7}
    reasons = {(i.get("line"), Path(i["file"]).name): i["reason"] for i in report["issues"]}
    assert "expected 32 columns" in reasons[(4, "coordenadas_train.csv")]
    assert "non-numeric" in reasons[(5, "coordenadas_train.csv")]
    outside = [i for i in report["issues"] if "outside the 299x299 image" in i["reason"]]
    assert len(outside) == 1 and outside[0]["annotation"].endswith("coordenadas_train.csv:6")
    assert reasons[(None, "COVID-12345.png")] == "image file not found"
    assert reasons[(None, "COVID-99999.png")] == "unreadable or not an image"
    assert "escapes the data root" in reasons[(9, "coordenadas_train.csv")]
    assert "not one of" in reasons[(10, "coordenadas_train.csv")]
    assert any(p.endswith("Normal-orphan.png") for p in report["unannotated_images"])
    assert safe_torch_load(status.path / "train.pt")["images"].shape[0] == 3


def test_missing_annotation_file_names_it(tmp_path, broken_root):
    (broken_root / "coordenadas" / "coordenadas_val.csv").unlink()
    with pytest.raises(FileNotFoundError, match="coordenadas_val.csv"):
        prepare(broken_root, tmp_path / "cache")


def test_interrupted_build_is_never_trusted(tmp_path):
    config = {"a": 1}
    calls = []

    def build_then_die(folder: Path):
        torch.save({"x": torch.ones(3)}, folder / "train.pt")
        calls.append("died")
        raise KeyboardInterrupt  # killed after writing a file, before the manifest

    with pytest.raises(KeyboardInterrupt):
        cached_build(tmp_path, config, build_then_die)
    folder = tmp_path / config_hash(config)[:12]
    assert (folder / "train.pt").exists() and manifest_problem(folder, config_hash(config)).startswith("no manifest")

    def build(folder: Path):
        torch.save({"x": torch.zeros(3)}, folder / "train.pt")
        calls.append("built")
        return {}

    status = cached_build(tmp_path, config, build)
    assert not status.hit and calls == ["died", "built"]
    assert cached_build(tmp_path, config, build).hit and calls == ["died", "built"]

    # a tampered or truncated file is caught by the manifest and rebuilt
    data = (folder / "train.pt").read_bytes()
    (folder / "train.pt").write_bytes(data[: len(data) // 2])
    assert "size" in manifest_problem(folder, config_hash(config))
    assert not cached_build(tmp_path, config, build).hit and calls[-1] == "built"
    tampered = bytearray((folder / "train.pt").read_bytes())
    tampered[-10] ^= 0xFF
    (folder / "train.pt").write_bytes(bytes(tampered))
    assert "does not match" in manifest_problem(folder, config_hash(config))
