"""The entry points' malloc tuning: which environment they re-execute with, and that they do so exactly once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studykit.utils import allocator
from studykit.utils.allocator import REEXECUTED, SWITCH, TUNABLES, applies, parse_tunables, tuned_environment

ROOT = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(not applies(), reason="the tuning applies to Linux with glibc only")


@needs_glibc
def test_tuned_environment_adds_every_tunable_and_keeps_the_rest():
    env = tuned_environment({"PATH": "/bin"})
    assert env is not None and env["PATH"] == "/bin" and env[REEXECUTED] == "1"
    assert parse_tunables(env["GLIBC_TUNABLES"]) == TUNABLES


@needs_glibc
def test_user_tunables_keep_their_values():
    env = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=5:glibc.cpu.hwcaps=-AVX512F"})
    tunables = parse_tunables(env["GLIBC_TUNABLES"])
    assert tunables["glibc.malloc.mmap_max"] == "5"
    assert tunables["glibc.cpu.hwcaps"] == "-AVX512F"
    assert tunables["glibc.malloc.hugetlb"] == TUNABLES["glibc.malloc.hugetlb"]


@needs_glibc
def test_malformed_user_tunables_are_passed_on_untouched():
    """glibc ignores what it cannot parse; so do we, rather than fail to start a run over the user's setting."""
    env = tuned_environment({"GLIBC_TUNABLES": "not-a-tunable::glibc.malloc.mmap_max=5"})
    assert env["GLIBC_TUNABLES"].split(":")[:2] == ["not-a-tunable", "glibc.malloc.mmap_max=5"]
    assert parse_tunables(env["GLIBC_TUNABLES"])["glibc.malloc.hugetlb"] == TUNABLES["glibc.malloc.hugetlb"]


@needs_glibc
@pytest.mark.parametrize("env", [
    {SWITCH: "0"},
    {SWITCH: "off"},
    {REEXECUTED: "1"},
    {"GLIBC_TUNABLES": ":".join(f"{k}={v}" for k, v in TUNABLES.items())},
])
def test_nothing_to_do(env):
    assert tuned_environment(env) is None


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert tuned_environment({}) is None


SCRIPT = """
import json, os, sys
sys.path.insert(0, {src!r})
print("start", flush=True)
from studykit.utils.allocator import reexec_with_tuned_malloc
reexec_with_tuned_malloc()
print(json.dumps({{"tunables": os.environ.get("GLIBC_TUNABLES"), "argv": sys.argv[1:]}}))
"""


def run_script(tmp_path: Path, env_extra: dict[str, str]) -> tuple[list[str], dict]:
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT.format(src=str(ROOT / "src")))
    env = {k: v for k, v in os.environ.items() if k not in (SWITCH, REEXECUTED, "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-u", str(script), "a=1", "b=x y"], env={**env, **env_extra},
                         capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    return lines, json.loads(lines[-1])


@needs_glibc
def test_entry_point_reexecutes_once_with_its_arguments(tmp_path):
    lines, result = run_script(tmp_path, {})
    assert lines.count("start") == 2  # the first start, then the re-executed one, and no third
    assert parse_tunables(result["tunables"]) == TUNABLES
    assert result["argv"] == ["a=1", "b=x y"]


def test_switched_off_runs_once_untouched(tmp_path):
    lines, result = run_script(tmp_path, {SWITCH: "0"})
    assert lines.count("start") == 1
    assert result["tunables"] is None and result["argv"] == ["a=1", "b=x y"]


FAULTS = """
import resource
import numpy as np
for i in range(6):
    if i == 1:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(16 << 20, dtype=np.float32)  # 64 MB, written in full, as a training step's activations are
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@needs_glibc
def test_tunables_stop_large_blocks_from_faulting_in_again():
    """glibc really applies them: a freed 64 MB block is reused, not unmapped and faulted in again next time."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from malloc_tuning import environment  # the environments the speed benchmark runs its two modes in

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS], env=environment(mode), capture_output=True, text=True,
                             timeout=60, check=True)
        return int(out.stdout.strip())

    default, tuned = faults("default"), faults("tuned")
    assert default >= 5 * 32  # five 64 MB blocks faulted in again: 16384 faults each in 4 kB pages, 32 in 2 MB ones
    assert tuned < default / 20
