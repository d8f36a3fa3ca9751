"""Loading is restricted to tensors and plain containers; config and data strings are never executed;
file names from annotations stay inside their data root."""

import os
import re
from pathlib import Path

import pytest
import torch

from studykit.data.paths import UnsafePathError, safe_join
from studykit.models.backbones import create_backbone
from studykit.utils.io import safe_torch_load
from tests.conftest import ROOT

SOURCES = [p for p in [*ROOT.glob("*.py"), *(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]]


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_crafted_checkpoint_is_refused(crafted):
    path, marker = crafted
    with pytest.raises(RuntimeError, match="crafted.ckpt.*weights_only"):
        safe_torch_load(path)
    with pytest.raises(RuntimeError, match="cannot be loaded safely"):
        create_backbone("resnet18", {"source": "file", "path": str(path)})
    assert not marker.exists()


def test_resume_from_crafted_checkpoint_is_refused(crafted, make_cfg):
    from studykit.training.run import train

    path, marker = crafted
    stage_dir = path.parent / "head_only"
    stage_dir.mkdir()
    ckpt = stage_dir / "last.ckpt"
    path.rename(ckpt)
    with pytest.raises(RuntimeError, match="cannot be loaded safely"):
        train(make_cfg(["phase=head_only", f"ckpt_path={ckpt}"]))
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    calls = [(p, line) for p in SOURCES for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls, "expected at least the safe loader"
    for path, line in calls:
        assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_no_eval_or_exec_of_strings():
    pattern = re.compile(r"(?<![.\w])(eval|exec)\s*\(")
    for path in SOURCES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path}:{n}: {line.strip()}"


def test_annotation_paths_cannot_escape_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    assert safe_join(root, "a", "x.png") == (root / "a" / "x.png").resolve()
    with pytest.raises(UnsafePathError, match="escapes the data root"):
        safe_join(root, "..", "secret.png", source="labels.csv:3")
    with pytest.raises(UnsafePathError, match="labels.csv:3: absolute path"):
        safe_join(root, "/etc/passwd", source="labels.csv:3")
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="escapes"):
        safe_join(root, "link", "outside.png")
