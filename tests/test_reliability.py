"""Faults a user meets with real files and interrupted runs: resume, huge and rotated photos, file modes,
checkpoints cut short, writes into the data, empty splits, data behind symbolic links, concurrent caches,
code fingerprints. Each test fails without the guarantee it names (README, "Reliability")."""

import csv
import importlib
import json
import multiprocessing as mp
import os
import shutil
import stat
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studykit.builders import build_datamodule
from studykit.data.cache import cached_build, load_cached, reading
from studykit.data.images import read_grey, read_rgb
from studykit.evaluation.runner import evaluate
from studykit.preprocessing.run import Source, preprocess_faces
from studykit.training.run import train
from studykit.utils.io import (
    TruncatedFileError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    code_dependencies,
    code_fingerprint,
    file_lock,
    safe_torch_load,
)
from tests.conftest import DATA_ROOT, TINY_CXR, compose_cfg

JAFFE = DATA_ROOT / "jaffe" / "jaffe_db"
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
FAST_FACES = ["data.prepare.pipeline.stages=[raw_tensors,full_frame_boxes,crop_resize]",
              "data.prepare.pipeline.crop_resize.size=32", "data.input_size=32"]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height grey pixels, with one tiny data chunk: what a reader sees
    of a huge photo before decoding it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def rotated_copy(source: Path, target: Path) -> Path:
    """`source` stored sideways (90 degrees counter-clockwise) with EXIF Orientation 6, as a phone camera
    stores a portrait photo; lossless PNG, so the upright pixels are recoverable exactly."""
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(source) as im:
        im.convert("RGB").rotate(90, expand=True).save(target, exif=exif)
    return target


# ---- 1. resume ------------------------------------------------------------------------------------------
def resume_cfg(out: Path, cache: Path, epochs: int, extra: list[str]):
    return compose_cfg("train", [*TINY_CXR, "phase=head_only", f"phase.stages.head_only.epochs={epochs}", "trainer.max_epochs=null",
                                 # epoch 0 is the best for good: a resumed run must keep it as best.ckpt
                                 "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min", *SHORT, *extra],
                       out, cache)


@pytest.mark.slow
def test_resume_continues_the_run_folder_and_tests_the_truly_best_weights(tmp_path, shared_cache):
    run = tmp_path / "run"
    train(resume_cfg(run, shared_cache, 2, ["test=false"]))
    last = run / "checkpoints/head_only/last.ckpt"
    # the README's resume command starts in a new folder; the run must go on in its own
    summary = train(resume_cfg(tmp_path / "new-folder", shared_cache, 3, ["test=false", f"ckpt_path={last}"]))
    best = run / "checkpoints/head_only/best.ckpt"
    assert summary["stages"]["head_only"]["best_checkpoint"] == str(best)
    assert summary["stages"]["head_only"]["best_score"] == 0.0 and safe_torch_load(best)["epoch"] == 0
    assert safe_torch_load(last)["epoch"] == 2 and not (tmp_path / "new-folder").exists()
    # killed after the last epoch: a resume with nothing left to train tests the best weights and evaluate.py agrees
    summary = train(resume_cfg(tmp_path / "third", shared_cache, 3, [f"ckpt_path={last}"]))
    report = json.loads((run / "test_report.json").read_text())
    assert report["checkpoint"] == str(best)
    again = evaluate(compose_cfg("evaluate", [f"run_dir={run}"], tmp_path / "ev", shared_cache))
    assert again["mean_px"] == pytest.approx(report["mean_px"], rel=1e-5)
    # a run folder moved elsewhere resumes with its own best checkpoint and score, not the old folder's
    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    summary = train(resume_cfg(tmp_path / "fourth", shared_cache, 4, ["test=false", f"ckpt_path={moved / 'checkpoints/head_only/last.ckpt'}"]))
    assert summary["stages"]["head_only"]["best_checkpoint"] == str(moved / "checkpoints/head_only/best.ckpt")
    assert summary["stages"]["head_only"]["best_score"] == 0.0


def test_hydra_run_folder_of_a_resume_is_the_checkpoints_run(tmp_path):
    from studykit.config import resumed_run_dir

    ckpt = tmp_path / "outputs" / "r" / "checkpoints" / "finetune" / "last.ckpt"
    assert resumed_run_dir(str(ckpt), "new") == str(tmp_path / "outputs" / "r")
    assert resumed_run_dir(None, "new") == "new"
    assert resumed_run_dir(str(tmp_path / "loose" / "last.ckpt"), "new") == "new"  # not inside a run folder


# ---- 8. checkpoints cut short -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_copy_killed_midway_never_truncates_last_ckpt(tmp_path, shared_cache, monkeypatch):
    """Lightning's own writer saves into the system temp folder and moves the file; across filesystems the
    move is a copy, and a kill mid-copy leaves a truncated last.ckpt. Here every such move is cut short."""
    import fsspec.implementations.local as fs_local

    def killed_copy(src, dst, *args, **kwargs):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed while copying the checkpoint")

    monkeypatch.setattr(fs_local.shutil, "move", killed_copy)
    run = tmp_path / "run"
    train(resume_cfg(run, shared_cache, 2, ["test=false"]))
    for name in ("last.ckpt", "best.ckpt", "last.ckpt.prev"):
        state = safe_torch_load(run / "checkpoints/head_only" / name)
        assert "state_dict" in state and "optimizer_states" in state


@pytest.mark.slow
def test_a_truncated_last_ckpt_is_named_and_resume_falls_back_to_the_previous(tmp_path, shared_cache, caplog):
    run = tmp_path / "run"
    train(resume_cfg(run, shared_cache, 2, ["test=false"]))
    last = run / "checkpoints/head_only/last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # e.g. a copy of the run folder cut short
    with pytest.raises(TruncatedFileError, match="last.ckpt: truncated"):
        safe_torch_load(last)
    summary = train(resume_cfg(run, shared_cache, 3, ["test=false", f"ckpt_path={last}"]))
    assert "resuming from the checkpoint it replaced" in caplog.text
    # last.ckpt.prev held epoch 0: epochs 1 and 2 were trained again
    assert safe_torch_load(last)["epoch"] == 2 and summary["stages"]["head_only"]["epochs_run"] == 3
    (run / "checkpoints/head_only/last.ckpt.prev").unlink()
    last.write_bytes(data[:1000])
    with pytest.raises(TruncatedFileError, match="truncated"):
        train(resume_cfg(run, shared_cache, 4, ["test=false", f"ckpt_path={last}"]))


# ---- 2, 3. huge and rotated photos ------------------------------------------------------------------------
def test_a_huge_photo_is_an_unreadable_row_and_the_rest_run(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    face = sorted(JAFFE.glob("*.tiff"))[0]
    shutil.copy(face, folder / "a_face.tiff")
    png_header_only(folder / "b_huge.png", 20_000, 15_000)  # 300 MP: Pillow's bomb check would raise here
    shutil.copy(face, folder / "c_small_but_over_the_limit.tiff")
    files = sorted(folder.iterdir())
    source = Source(files, [""] * 3, [""] * 3, [""] * 3)
    prepare = {"pipeline": {"stages": ["raw_tensors", "full_frame_boxes", "crop_resize"], "crop_resize": {"size": 32}}}
    state, _ = preprocess_faces(folder, tmp_path / "cache", prepare, source)
    rows = dict(zip((Path(p).name for p in state["paths"]), zip(state["status"], state["reason"])))
    assert rows["a_face.tiff"][0] == rows["c_small_but_over_the_limit.tiff"][0] == "ok"
    assert rows["b_huge.png"][0] == "unreadable" and "20000x15000 = 300.0 megapixels" in rows["b_huge.png"][1]
    # the limit is an option of the stage: below JAFFE's 65,536 pixels, a JAFFE photo is refused too
    limited = {**prepare, "pipeline": {**prepare["pipeline"], "raw_tensors": {"max_pixels": 60_000}}}
    state, _ = preprocess_faces(folder, tmp_path / "cache", limited, source)
    assert state["status"] == ["unreadable"] * 3 and "256x256" in state["reason"][0]
    # the grey reader of X-rays and label distributions refuses it from its header as well
    with pytest.raises(ValueError, match="image too large: 20000x15000"):
        read_grey(folder / "b_huge.png")


def test_exif_orientation_is_applied_on_the_face_path(tmp_path):
    upright = sorted(JAFFE.glob("*.tiff"))[5]
    rotated = rotated_copy(upright, tmp_path / "portrait.png")
    assert Image.open(rotated).size == Image.open(upright).size  # JAFFE is square: only the content is turned
    assert np.array_equal(read_rgb(rotated), read_rgb(upright))


# ---- 7. file modes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_usual_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
        atomic_write_json(tmp_path / "report.json", {})
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "cache.pt")
        status = cached_build(tmp_path / "cache", {"k": 1}, lambda folder: atomic_torch_save({}, folder / "split.pt") or {})
    finally:
        os.umask(old)
    for path in (tmp_path / "report.md", tmp_path / "report.json", tmp_path / "cache.pt", status.path / "split.pt",
                 status.path / "manifest.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a second user")
def test_a_second_user_reads_a_shared_cache_and_takes_its_lock():
    shared = Path(tempfile.mkdtemp(prefix="studykit-shared-"))
    try:
        os.chmod(shared, 0o777)
        old = os.umask(0o022)
        try:
            with file_lock(shared / ".abc.lock"):  # created by this user, as a first build would
                pass
            atomic_torch_save({"w": torch.ones(2)}, shared / "abc" / "train.pt")
        finally:
            os.umask(old)
        expected = (shared / "abc" / "train.pt").read_bytes()
        pid = os.fork()
        if pid == 0:  # the child becomes user `nobody` and reads the cache as a second user would
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                with file_lock(shared / ".abc.lock", shared=True):
                    code = 0 if (shared / "abc" / "train.pt").read_bytes() == expected else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(shared)


# ---- 9. writes into the data ------------------------------------------------------------------------------
def test_no_entry_point_writes_inside_the_data_root(tmp_path, shared_cache):
    from studykit.utils import io as sio

    data = tmp_path / "data"
    (data / "cxr_landmarks").mkdir(parents=True)
    try:
        cfg = compose_cfg("train", TINY_CXR, data / "runs" / "r", shared_cache)
        cfg.paths.data_root = str(data)
        with pytest.raises(PermissionError, match="read-only data root"):
            train(cfg)
        assert not (data / "runs").exists()
        cfg = compose_cfg("train", TINY_CXR, tmp_path / "run", data / "cache")
        cfg.paths.data_root = str(data)
        with pytest.raises(PermissionError, match="read-only data root"):
            train(cfg)
        # the cache's lock, rebuild and folders go through the same check
        with pytest.raises(PermissionError):
            cached_build(data / "cache", {"k": 1}, lambda folder: {})
        assert sorted(p.name for p in data.iterdir()) == ["cxr_landmarks"]
    finally:
        sio._READ_ONLY_ROOTS.discard(data.resolve())


# ---- 10. empty splits of a folder data set ------------------------------------------------------------------
def test_a_folder_data_set_with_too_few_photos_is_refused_before_training(tmp_path):
    root = tmp_path / "photos"
    for expression, folder in (("HA", "happy"), ("SA", "sad")):
        (root / folder).mkdir(parents=True)
        for path in sorted(JAFFE.glob(f"*.{expression}*.tiff"))[:2]:  # two photos per class
            shutil.copy(path, root / folder / path.name)
    cfg = compose_cfg("train", ["data=image_folder", f"data.root={root}", "model=resnet18", *FAST_FACES, "callbacks.progress=null",
                                "trainer.max_epochs=1"], tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ValueError, match=r"data.n_folds=5: cross-validation needs 2 to 4 folds here"):  # the default: 5 folds
        train(cfg)
    assert not list((tmp_path / "run").glob("checkpoints/*/*.ckpt"))  # refused before any epoch
    cfg = compose_cfg("train", ["data=image_folder", f"data.root={root}", "model=resnet18", *FAST_FACES, "callbacks.progress=null",
                                "trainer.max_epochs=1", "data.split_by=stratified"], tmp_path / "run1", tmp_path / "cache")
    with pytest.raises(ValueError, match=r"split\(s\) \['val', 'test'\] hold no faces.*fewer: \{'happy': 2, 'sad': 2\}"):
        train(cfg)
    assert not list((tmp_path / "run1").glob("checkpoints/*/*.ckpt"))
    cfg = compose_cfg("train", ["data=image_folder", f"data.root={root}", "model=resnet18", *FAST_FACES, "data.val_fraction=0",
                                "data.test_fraction=0.5", "data.split_by=stratified"], tmp_path / "run2", tmp_path / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"\['val'\] hold no faces \(data.val_fraction=0.0"):
        dm.setup("fit")


# ---- 11. data roots and caches behind symbolic links ------------------------------------------------------
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """The shared data root, a cache folder and a folder of class folders, each reached through a symbolic link."""
    (tmp_path / "real-cache").mkdir()
    (tmp_path / "data").symlink_to(DATA_ROOT, target_is_directory=True)
    (tmp_path / "cache").symlink_to(tmp_path / "real-cache", target_is_directory=True)
    for expression, folder in (("HA", "happy"), ("SA", "sad")):
        (tmp_path / "real-folders" / folder).mkdir(parents=True)
        for path in sorted(JAFFE.glob(f"*.{expression}*.tiff"))[:4]:
            shutil.copy(path, tmp_path / "real-folders" / folder / path.name)
    (tmp_path / "folders").symlink_to(tmp_path / "real-folders", target_is_directory=True)
    return tmp_path / "data", tmp_path / "cache"


@pytest.mark.parametrize("data", [
    ["data=cxr_landmarks", "data.prepare.limit_per_split={train:4,val:2,test:2}", "data.prepare.image_size=64"],
    ["data=ferplus_distribution", "data.prepare.limit_per_split={train:4,val:2,test:2}"],
    ["data=ferplus_expression", "data.prepare.limit_per_split={train:4,val:2,test:2}", *FAST_FACES],
    ["data=jaffe", "data.prepare.limit=60", "data.n_folds=3", *FAST_FACES],
    ["data=image_folder", "data.root=FOLDERS", *FAST_FACES],
], ids=["cxr", "ferplus_distribution", "ferplus_expression", "jaffe", "image_folder"])
def test_every_data_source_prepares_through_symbolic_links(tmp_path, data):
    root, cache = linked(tmp_path)
    data = [o.replace("FOLDERS", str(tmp_path / "folders")) for o in data]
    cfg = compose_cfg("prepare", data, tmp_path / "out", cache)
    cfg.paths.data_root = str(root)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) > 0
    assert any((tmp_path / "real-cache").rglob("manifest.json"))


# ---- also: names, fingerprints, two processes on one cache ------------------------------------------------
def test_code_fingerprints_follow_helpers_in_other_modules(tmp_path, monkeypatch):
    package = tmp_path / "fppkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def read(x):\n    return x + 1\n")
    (package / "stage.py").write_text("from fppkg.helpers import read\n\n\ndef stage(x):\n    return read(x) * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = importlib.import_module("fppkg.stage")
    before = code_fingerprint(stage.stage)
    (package / "helpers.py").write_text("def read(x):\n    return x + 2\n")  # the stage's own code is unchanged
    importlib.reload(importlib.import_module("fppkg.helpers"))
    importlib.reload(stage)
    assert code_fingerprint(stage.stage) != before
    for name in list(sys.modules):
        if name.startswith("fppkg"):
            del sys.modules[name]
    # the face pipeline's first stage and the FER+ preparation depend on the shared image readers they call
    from studykit.data.ferplus import prepare_ferplus
    from studykit.preprocessing import faces

    assert "studykit.data.images.read_rgb" in code_dependencies(faces.raw_tensors)
    assert "studykit.data.images.read_grey" in code_dependencies(prepare_ferplus)


def _build_once(args):
    root, log, barrier = args
    barrier.wait()

    def build(folder: Path) -> dict:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # a slow build: the other process arrives while it runs
        atomic_torch_save({"x": torch.arange(5)}, folder / "train.pt")
        return {}

    status = cached_build(root, {"data": "same"}, build)
    return status.hit, load_cached(status.path, "train.pt")["x"].tolist()


def _hold_while_loading(args):
    folder, started, seconds = args
    with reading(Path(folder)):
        Path(started).write_text(str(time.time()))
        time.sleep(seconds)
        value = safe_torch_load(Path(folder) / "train.pt")["x"].tolist()
    return time.time(), value


def test_two_processes_on_a_cold_cache_build_once_and_a_forced_rebuild_waits_for_readers(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "builds.txt"
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)
        results = pool.map(_build_once, [(tmp_path / "cache", log, barrier)] * 2)
        assert sorted(hit for hit, _ in results) == [False, True]  # one build, one cache hit
        assert [v for _, v in results] == [[0, 1, 2, 3, 4]] * 2 and len(log.read_text().split()) == 1
        folder = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
        started = tmp_path / "started"
        reader = pool.apply_async(_hold_while_loading, ((folder, started, 1.0),))
        while not started.exists():
            time.sleep(0.05)
        rebuilt = cached_build(tmp_path / "cache", {"data": "same"},
                               lambda f: atomic_torch_save({"x": torch.arange(3)}, f / "train.pt") or {}, force=True)
        rebuilt_at = time.time()
        read_done, value = reader.get(timeout=60)
        assert value == [0, 1, 2, 3, 4] and rebuilt_at >= read_done  # the rebuild waited for the reader
        assert load_cached(rebuilt.path, "train.pt")["x"].tolist() == [0, 1, 2]


def test_non_utf8_file_names_are_written_back_as_their_bytes(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")
    atomic_write_text(tmp_path / "predictions.csv", f"file\n{name}\n")
    assert (tmp_path / "predictions.csv").read_bytes() == b"file\ncaf\xe9.png\n"
    rows = list(csv.reader((tmp_path / "predictions.csv").open(encoding="utf-8", errors="surrogateescape")))
    assert rows[1] == [name]
