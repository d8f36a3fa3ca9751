"""glibc malloc settings for CPU training, applied by re-executing the entry point once at its start.

Why: a training step allocates activations of tens of MB (at batch 16 the recipe's first stride-2 block alone
holds 78 MB tensors). glibc serves every block above its mmap threshold (128 kB, rising to at most 32 MB) from a
fresh mmap and unmaps it on free, so each step page-faults its working set in again, zero-filling 4 kB at a time.
Keeping freed memory in the heap (`mmap_max=0`, a high `trim_threshold`) and backing the heap with transparent huge
pages (`hugetlb=1`) removes those faults (benchmarks/malloc_tuning.py measures the gain). glibc reads its tunables only
when a process starts, hence the re-exec; it happens before torch is imported, so it costs a fraction of a second.

`STUDYKIT_MALLOC_TUNING=0` turns it off; tunables already in `GLIBC_TUNABLES` keep the user's values.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

SWITCH = "STUDYKIT_MALLOC_TUNING"
# set in the re-executed process, so a libc that ignores GLIBC_TUNABLES can never cause a second re-exec
REEXECUTED = "STUDYKIT_MALLOC_REEXECUTED"
TUNABLES = {
    "glibc.malloc.hugetlb": "1",  # madvise(MADV_HUGEPAGE) on malloc's memory: 2 MB pages, 512x fewer faults
    "glibc.malloc.mmap_max": "0",  # no per-block mmap: large blocks come from the heap and are reused
    "glibc.malloc.trim_threshold": str(1 << 36),  # never hand the heap's top back to the kernel between steps
}


def parse_tunables(value: str) -> dict[str, str]:
    """`GLIBC_TUNABLES` ("name=value:name=value") as a dict; malformed items are kept for the output as-is."""
    items: dict[str, str] = {}
    for item in filter(None, value.split(":")):
        name, sep, val = item.partition("=")
        items[name] = val if sep else ""
    return items


def applies() -> bool:
    """Whether this platform has glibc's tunables at all (Linux with glibc)."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def tuned_environment(env: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing is to be done: switched off, already
    re-executed, not Linux with glibc, or every tunable already set (by us or by the user)."""
    if env.get(SWITCH, "1").strip().lower() in {"0", "false", "no", "off"} or env.get(REEXECUTED):
        return None
    if not applies():
        return None
    current = parse_tunables(env.get("GLIBC_TUNABLES", ""))
    missing = {name: value for name, value in TUNABLES.items() if name not in current}
    if not missing:
        return None
    merged = {**current, **missing}
    new_env = dict(env)
    new_env["GLIBC_TUNABLES"] = ":".join(f"{name}={value}" if value else name for name, value in merged.items())
    new_env[REEXECUTED] = "1"
    return new_env


def reexec_with_tuned_malloc() -> None:
    """Re-execute this Python process with the malloc tunables, unless `tuned_environment` says not to.
    Call it first thing in an entry script's top level, before torch is imported."""
    new_env = tuned_environment(os.environ)
    if new_env is None:
        return
    # orig_argv keeps the interpreter's own flags (-u, -X ...); argv[0] of the script is unchanged
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], new_env)
