"""FER+ as an expression data set: Microsoft's majority rule on real label.csv rows, the face pipeline with
selectable stages (full-frame boxes, no detector), folder splits, and a short training run."""

import json
import shutil

import numpy as np
import pytest
import torch

from studykit.builders import build_datamodule
from studykit.data.face_sources import preprocess
from studykit.data.ferplus import RAW_CLASSES, majority_labels, parse_label_csv
from studykit.preprocessing.run import build_stages
from tests.conftest import DATA_ROOT, compose_cfg, train_and_evaluate

FERPLUS = DATA_ROOT / "ferplus" / "data"
EMOTIONS = list(RAW_CLASSES[:8])
TINY_FERPLUS = ["experiment=ferplus_expression", "data.prepare.limit_per_split={train:48,val:16,test:16}", "data.train_target=majority",
                "data.input_size=32", "data.batch_size=16", "callbacks.progress=null", "trainer.enable_model_summary=false"]


def rows(split: str, names: list[str]) -> np.ndarray:
    ids, _, votes, issues = parse_label_csv(FERPLUS / split / "label.csv", FERPLUS / split, 10, split)
    assert not issues
    return votes[[ids.index(n) for n in names]]


def test_majority_rule_on_real_rows():
    names = ["fer0032220.png", "fer0032222.png", "fer0032223.png", "fer0032224.png", "fer0032225.png", "fer0034757.png"]
    labels, reasons = majority_labels(rows("FER2013Test", names), RAW_CLASSES, EMOTIONS)
    # votes (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF):
    # 0,0,0,0,2,1,0,7,0,0 -> the single disgust vote dropped: contempt 7 of 9 > 4.5
    assert EMOTIONS[labels[0]] == "contempt"
    # 3,0,0,5,0,0,0,0,2,0 -> sadness 5 of 10 is not more than half: no majority
    assert labels[1] == -1 and reasons[1].startswith("no majority")
    # 6,0,1,2,0,0,0,0,1,0 -> singles dropped: neutral 6 of 8
    assert EMOTIONS[labels[2]] == "neutral"
    # 0,0,4,0,1,2,3,0,0,0 -> surprise 4 of 9: no majority
    assert labels[3] == -1
    # 0,0,0,0,9,0,1,0,0,0 -> anger
    assert EMOTIONS[labels[4]] == "anger"
    # 2,0,1,0,0,0,0,0,6,1 -> unknown 6 of 8 wins, and unknown is not an emotion: excluded
    assert labels[5] == -1 and "'unknown'" in reasons[5]
    nf, nf_reasons = majority_labels(rows("FER2013Train", ["fer0010628.png"]), RAW_CLASSES, EMOTIONS)
    assert nf[0] == -1 and "'NF'" in nf_reasons[0]
    # the 10 raw classes as the class set keep unknown as a label of its own
    raw, _ = majority_labels(rows("FER2013Test", ["fer0034757.png"]), RAW_CLASSES, RAW_CLASSES)
    assert RAW_CLASSES[raw[0]] == "unknown"


def test_ferplus_pipeline_skips_the_detector_and_records_exclusions(tmp_path):
    cfg = compose_cfg("preprocess", ["data=ferplus_expression", "data.prepare.limit_per_split={train:20,val:8,test:8}"],
                      tmp_path / "out", tmp_path / "cache")
    state, results = preprocess(cfg)
    assert [r.name for r in results] == ["raw_tensors", "full_frame_boxes", "crop_resize"]
    assert state["face_images"].shape == (36, 3, 48, 48) and state["status"] == ["ok"] * 36
    assert state["splits"] == ["train"] * 20 + ["val"] * 8 + ["test"] * 8 and set(state["labels"]) <= set(EMOTIONS)
    # the full frame is the box: the crop is the image itself, untouched
    assert torch.equal(state["boxes"][0], torch.tensor([0.0, 0.0, 48.0, 48.0]))
    assert torch.equal(state["face_images"][0], state["images"][0])
    pixels = torch.stack(state["images"]).float().div(255)
    assert torch.allclose(state["mean"], pixels.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(state["std"], pixels.transpose(0, 1).reshape(3, -1).std(1), atol=1e-4)
    report = json.loads((tmp_path / "cache" / "faces" / "ferplus" / "source_report.json").read_text())
    by_path = {row["path"]: row["reason"] for row in report["excluded_rows"]}
    assert by_path["data/FER2013Test/fer0033120.png"] == "listed in data.prepare.exclude"  # the icon
    assert by_path["data/FER2013Test/fer0032222.png"].startswith("no majority")
    assert report["kept"] == 36 and report["kept_per_split"] == {"train": 20, "val": 8, "test": 8}


def test_stage_order_is_checked_before_running():
    with pytest.raises(ValueError, match="four_channel.*landmarks"):
        build_stages({"stages": ["raw_tensors", "full_frame_boxes", "crop_resize", "four_channel"]})
    with pytest.raises(ValueError, match="mtcnn_boxes.*images"):
        build_stages({"stages": ["mtcnn_boxes"]})


@pytest.mark.slow
def test_ferplus_expression_trains_on_folder_splits_and_evaluates(tmp_path, shared_cache):
    cfg = compose_cfg("train", [*TINY_FERPLUS, "model=resnet18", "trainer.max_epochs=1", "trainer.limit_train_batches=2"],
                      tmp_path / "run", shared_cache)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    sizes = {s: len(dm.load_split(s)["labels"]) for s in ("train", "val", "test")}
    assert sizes == {"train": 48, "val": 16, "test": 16}
    item = dm.dataset("train")[0]
    assert item["image"].shape == (3, 32, 32) and 0 <= int(item["target"]) < 8
    run, report, out = train_and_evaluate(cfg, tmp_path, shared_cache)
    assert cfg.task.module.in_chans == 3 and cfg.task.module.num_classes == 8
    assert report["n_samples"] == 16 and len(report["confusion_matrix"]) == 8
    assert out["accuracy"] == pytest.approx(report["accuracy"])


def test_ferplus_bad_rows_and_missing_files_are_recorded(tmp_path):
    """A vote table with a short row and a row naming a missing image: both are listed with their reason,
    the good rows go on; a split without a vote table, or an unknown lister, is an error naming it."""
    root = tmp_path / "ferplus"
    rows = (FERPLUS / "FER2013Test" / "label.csv").read_text().splitlines()[:6]  # 4 of these 6 have a majority
    for split in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        folder = root / "data" / split
        folder.mkdir(parents=True)
        for row in rows:
            name = row.split(",")[0]
            if name != "fer0032225.png":  # the anger face's image is missing
                (folder / name).write_bytes((FERPLUS / "FER2013Test" / name).read_bytes())
        (folder / "label.csv").write_text("\n".join(rows + ['fer9999999.png,"(0, 0, 48, 48)",1,2']) + "\n")
    cfg = compose_cfg("preprocess", ["data=ferplus_expression", f"data.root={root}"], tmp_path / "out", tmp_path / "cache")
    state, _ = preprocess(cfg)
    assert len(state["paths"]) == 3 * 3 and state["status"] == ["ok"] * 9  # 4 with a majority, less the missing one
    report = json.loads((tmp_path / "cache" / "faces" / "ferplus" / "source_report.json").read_text())
    reasons = {(row["split"], row["path"].rsplit("/", 1)[-1]): row["reason"] for row in report["excluded_rows"]}
    assert reasons[("test", "fer0032225.png")] == "image file not found"
    assert "expected 12 columns" in reasons[("val", "label.csv:7")]
    (root / "data" / "FER2013Valid" / "label.csv").unlink()
    with pytest.raises(FileNotFoundError, match="FER2013Valid/label.csv"):
        preprocess(cfg)
    bad = compose_cfg("preprocess", ["data=ferplus_expression", f"data.root={root}", "data.prepare.labels_from=votes"],
                      tmp_path / "out", tmp_path / "cache")
    with pytest.raises(ValueError, match="labels_from='votes'"):
        preprocess(bad)


@pytest.mark.slow
def test_ferplus_expression_trains_on_the_votes(tmp_path, shared_cache):
    """The FER+ paper's schemes on the majority-label protocol: training targets from label.csv's votes,
    validation and test on the label; a data set without votes refuses them, naming the option."""
    from studykit.data.expression_datamodule import FaceDataset
    from studykit.training.run import train

    cfg = compose_cfg("train", [*TINY_FERPLUS, "model=resnet18", "data.train_target=distribution", "trainer.max_epochs=1",
                                "trainer.limit_train_batches=2"], tmp_path / "run", shared_cache)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    data = dm.dataset("train")
    votes = rows("FER2013Train", [data.image_id[i] for i in range(5)])[:, :8]
    for i in range(5):
        target = data[i]["target"]
        assert target.dtype == torch.float32 and torch.allclose(target, torch.from_numpy(votes[i] / votes[i].sum()))
        assert EMOTIONS[int(data.labels[i])] == EMOTIONS[int(target.argmax())]  # a majority label is the most voted class
    assert dm.dataset("val")[0]["target"].dtype == torch.long
    dm.train_target = "sample"
    sampled = dm.dataset("train")
    drawn = torch.stack([sampled[0]["target"] for _ in range(20)])
    assert torch.all(drawn.sum(1) == 1) and (votes[0][drawn.argmax(1).numpy()] > 0).all()  # one-hot, a voted class
    summary = train(cfg)  # cross-entropy on the soft targets
    assert summary["test"]["n_samples"] == 16 and np.isfinite(summary["stages"]["finetune"]["best_score"])

    with pytest.raises(ValueError, match="needs the annotators' votes"):
        FaceDataset(data.images[:2], data.labels[:2], data.image_id[:2], 32, True, {}, [0.5] * 3, [0.5] * 3, target="sample")


def test_the_vote_tables_are_listed_once_per_process_while_unchanged(tmp_path, monkeypatch):
    import studykit.data.ferplus as ferplus

    splits = {"train": "data/FER2013Train", "val": "data/FER2013Valid", "test": "data/FER2013Test"}
    for rel in splits.values():
        folder = tmp_path / rel
        folder.mkdir(parents=True)
        rows = (FERPLUS.parent / rel / "label.csv").read_text().splitlines()[:12]
        (folder / "label.csv").write_text("\n".join(rows) + "\n")
        for row in rows:
            shutil.copy(FERPLUS.parent / rel / row.split(",")[0], folder)
    prepare = {"splits": splits, "classes": "emotions8"}
    calls = []
    parse = ferplus.parse_label_csv
    monkeypatch.setattr(ferplus, "parse_label_csv", lambda *a, **k: calls.append(a[0]) or parse(*a, **k))
    first = ferplus.ferplus_source(tmp_path, prepare)
    again = ferplus.ferplus_source(tmp_path, prepare)
    assert len(calls) == 3 and again.paths == first.paths and again.excluded == first.excluded
    again.paths.clear()  # each caller gets its own lists
    assert ferplus.ferplus_source(tmp_path, prepare).paths == first.paths and len(calls) == 3
    # an edited vote table is read again
    table = tmp_path / splits["test"] / "label.csv"
    table.write_text("\n".join(table.read_text().splitlines()[:6]) + "\n")
    edited = ferplus.ferplus_source(tmp_path, prepare)
    assert len(calls) == 6 and edited.splits.count("test") < first.splits.count("test")
