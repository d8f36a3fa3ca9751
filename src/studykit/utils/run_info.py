"""What a run needs to be reproduced: resolved config, seed, package versions, git commit, data hash."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from studykit.utils.io import atomic_write_json, atomic_write_text

PACKAGES = (
    "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics", "timm",
    "albumentations", "opencv-python-headless", "numpy", "pandas", "studykit",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def save_run_info(run_dir: str | Path, cfg: DictConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "seed": cfg.get("seed"),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "git": git_state(cfg.paths.root_dir if "paths" in cfg else None),
        "packages": package_versions(),
        "platform": platform.platform(),
        # the allocator settings the entry point ran with (studykit.utils.allocator): they change speed, not results
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        **(extra or {}),
    }
    atomic_write_json(run_dir / "run_info.json", info)
    return info
