"""Bad input and faults: each is reported clearly or skipped and recorded, never a silent loss."""

import json

import cv2
import numpy as np
import pytest
import torch

import studykit.data.cxr_landmarks as cxr
from studykit.builders import build_datamodule
from studykit.data.cxr_landmarks import prepare_cxr_landmarks
from studykit.data.images import read_grey
from studykit.training.run import train
from studykit.utils.io import safe_torch_load
from tests.conftest import SPLITS, TINY


def test_corrupt_png_and_tiff_name_the_problem(cxr_root, tmp_path):
    real = next((cxr_root / "dataset" / "COVID").glob("*.png")).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(real[: len(real) // 3])
    tiff = tmp_path / "corrupt.tiff"
    ok, buf = cv2.imencode(".tiff", np.full((32, 32), 128, np.uint8))
    tiff.write_bytes(buf.tobytes()[:40])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x00" * 100)
    for path in (truncated, tiff, garbage):
        with pytest.raises(ValueError, match="unreadable"):
            read_grey(path)
    good_tiff = tmp_path / "good.tiff"
    good_tiff.write_bytes(buf.tobytes())
    assert read_grey(good_tiff).shape == (32, 32)


def test_empty_class_folder_is_reported(broken_root, tmp_path):
    (broken_root / "dataset" / "Viral_Pneumonia").mkdir(exist_ok=True)
    status = prepare_cxr_landmarks(broken_root, tmp_path / "cache", splits=SPLITS, image_size=64)
    report = json.loads((status.path / "report.json").read_text())
    reasons = {i["file"].rsplit("/", 1)[-1]: i["reason"] for i in report["issues"] if i.get("line") is None}
    assert reasons["Viral_Pneumonia"] == "class folder has no images"


def test_run_killed_while_writing_cache_is_rebuilt(cxr_root, tmp_path, monkeypatch):
    real_save = cxr.atomic_torch_save

    def dies_on_val(obj, path):
        if path.name == "val.pt":
            raise KeyboardInterrupt("killed")
        real_save(obj, path)

    monkeypatch.setattr(cxr, "atomic_torch_save", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_cxr_landmarks(cxr_root, tmp_path, splits=SPLITS, image_size=64, limit_per_split=TINY)
    monkeypatch.setattr(cxr, "atomic_torch_save", real_save)
    status = prepare_cxr_landmarks(cxr_root, tmp_path, splits=SPLITS, image_size=64, limit_per_split=TINY)
    assert not status.hit and "no manifest" in status.reason
    assert not list(status.path.glob(".*.tmp"))  # no half-written temp file left behind
    assert safe_torch_load(status.path / "val.pt")["images"].shape[0] == 3


def test_tampered_cache_is_rebuilt_by_the_datamodule(make_cfg):
    cfg = make_cfg()
    dm = build_datamodule(cfg)
    dm.prepare_data()
    folder = dm.cache_folder
    original = safe_torch_load(folder / "train.pt")["images"]
    data = bytearray((folder / "train.pt").read_bytes())
    (folder / "train.pt").write_bytes(bytes(data[: len(data) - 100]))  # truncated
    again = build_datamodule(cfg)
    again.prepare_data()
    assert torch.equal(safe_torch_load(again.cache_folder / "train.pt")["images"], original)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(make_cfg):
    cfg = make_cfg(["phase=head_only", "phase.stages.head_only.epochs=3", "trainer.max_epochs=null",
                    "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
                    "loss._target_=tests.helpers.NaNAfterLoss", "+loss.good_steps=2", "~loss.terms"])
    with pytest.raises(FloatingPointError) as err:
        train(cfg)
    message = str(err.value)
    assert "loss is nan" in message and "global step 2" in message and "epoch 1" in message
    assert "last good checkpoint" in message and "last.ckpt" in message
    kept = safe_torch_load(cfg.paths.output_dir + "/checkpoints/head_only/last.ckpt")
    assert kept["epoch"] == 0 and all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_unknown_model_name_lists_valid_ones(make_cfg):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="unknown backbone 'resnet_18'.*resnet18"):
        train(make_cfg(["model.backbone.name=resnet_18", "trainer.fast_dev_run=true"]))


def test_missing_data_root_is_named(make_cfg, tmp_path):
    cfg = make_cfg()
    cfg.data.root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_datamodule(cfg).prepare_data()


def test_a_resumed_run_that_completes_is_no_longer_marked_failed(tmp_path):
    """A member that failed once leaves failure.json (ensembles and sweep summaries skip such folders); once it
    is resumed and completes, the marker goes, so the finished member counts again."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from studykit.evaluation.files import sweep_members
    from studykit.utils.hydra_callbacks import SweepReport

    run = tmp_path / "sweep" / "0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config_resolved.yaml").write_text("seed: 1\n")
    (run / "failure.json").write_text('{"error": "killed"}')
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run)}, "job": {"num": 0}, "mode": RunMode.RUN,
                                            "sweep": {"dir": str(tmp_path / "sweep")}}})
    with pytest.raises(FileNotFoundError):
        sweep_members(tmp_path / "sweep")
    SweepReport().on_job_end(hydra_cfg, JobReturn(overrides=["seed=1"], hydra_cfg=hydra_cfg, status=JobStatus.COMPLETED, _return_value=3.2))
    assert not (run / "failure.json").exists() and sweep_members(tmp_path / "sweep") == [run]
