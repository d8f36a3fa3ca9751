"""A chain of cached preprocessing stages.

Each stage is a small function `(state, params, folder) -> outputs` wrapped by one cache: its folder is keyed
by the hash of its own parameters, version and code and of every stage before it, so changing a parameter or
the stage's code rebuilds that stage and the ones after it, never the ones before; a rerun with the same
config only loads; a run killed midway resumes at the first stage without a valid manifest
(studykit.data.cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studykit.data.cache import cached_build, load_cached
from studykit.utils.io import atomic_torch_save, code_fingerprint, config_hash

log = logging.getLogger(__name__)

StageFn = Callable[[dict[str, Any], dict[str, Any], Path], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    """A preprocessing stage: its name, its function, what it reads from the state and adds to it (a configured
    order is checked before anything runs), its version (bump when a change of output is not visible in its
    code, e.g. a library update), the fingerprint of its code (by default computed, following every project
    function it calls) and, once configured, its parameters. The cache key is all of these and the upstream."""

    name: str
    fn: StageFn
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    version: int = 1
    code: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    output: str = ""  # the .pt file the outputs are saved to (default: <name>.pt)
    # what else keys the cache, from the parameters (e.g. the content of a model file they name)
    extra_key: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.code:
            object.__setattr__(self, "code", code_fingerprint(self.fn))

    @property
    def filename(self) -> str:
        return self.output or f"{self.name}.pt"


@dataclass
class StageResult:
    name: str
    folder: Path
    hit: bool
    seconds: float
    items: int


def run_pipeline(stages: list[Stage], cache_root: str | Path, source: dict[str, Any],
                 state: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[StageResult]]:
    """Run or load every stage in order; `source` (e.g. file list and content hashes) keys the first one."""
    state = dict(state or {})
    upstream = config_hash(source)
    results = []
    for stage in stages:
        key = {"stage": stage.name, "version": stage.version, "code": stage.code, "params": stage.params, "upstream": upstream}
        if stage.extra_key is not None:
            key["extra"] = stage.extra_key(stage.params)
        start = time.perf_counter()

        def build(folder: Path, stage: Stage = stage) -> dict[str, Any]:
            outputs = stage.fn(state, stage.params, folder)
            atomic_torch_save(outputs, folder / stage.filename)
            return {"stage": stage.name}

        status = cached_build(Path(cache_root) / stage.name, key, build)
        outputs = load_cached(status.path, stage.filename)
        state.update(outputs)
        upstream = config_hash(key)
        n = len(outputs.get("paths", state.get("paths", [])))
        results.append(StageResult(stage.name, status.path, status.hit, time.perf_counter() - start, n))
        log.info("stage %-16s %s in %.2f s (%s)", stage.name, "cached" if status.hit else "built", results[-1].seconds, status.path)
    return state, results
