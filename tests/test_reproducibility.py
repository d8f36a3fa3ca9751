import json
from pathlib import Path

import pytest

from studykit.training.run import train

pytestmark = pytest.mark.slow
SHORT = ["phase=head_only", "phase.stages.head_only.epochs=2", "trainer.max_epochs=null", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]


def run(make_cfg, tmp_path, name: str, seed: int) -> dict:
    cfg = make_cfg([*SHORT, f"seed={seed}"])
    cfg.paths.output_dir = str(tmp_path / name)
    train(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "test_report.json").read_text())


def test_same_seed_same_metrics_other_seed_differs(make_cfg, tmp_path):
    a = run(make_cfg, tmp_path, "a", 7)
    b = run(make_cfg, tmp_path, "b", 7)
    c = run(make_cfg, tmp_path, "c", 8)
    for key in ("mean_px", "median_px", "max_px"):
        assert a[key] == b[key], key
    assert a["per_landmark"] == b["per_landmark"]
    assert a["mean_px"] != c["mean_px"]
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["seed"] == 7 and len(info["data_manifest_hash"]) == 64
