"""Hydra callbacks: a sweep report that lists every member, failed ones with their error."""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from studykit.utils.io import atomic_write_json, file_lock

log = logging.getLogger(__name__)
STATUS_FILE = "job_status.json"


class SweepReport(Callback):
    """Each job writes `job_status.json` (and `failure.json` when it failed) into its folder; in a sweep the
    member statuses are gathered into `<sweep dir>/sweep_report.json` after every job.

    A member that fails (out of memory, NaN loss, bad input...) does not stop the others: Hydra's launchers
    run them all and raise only at the end, so the report is rewritten by each job as it ends (under a lock,
    since launchers such as joblib end jobs in other processes) rather than once at the end.
    """

    def __init__(self, filename: str = "sweep_report.json"):
        self.filename = filename

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg else config.hydra
        output_dir = Path(hydra_cfg.runtime.output_dir)
        status: dict[str, Any] = {
            "job": hydra_cfg.job.get("num"),
            "overrides": list(job_return.overrides or []),
            "output_dir": str(output_dir),
            "status": job_return.status.name,
        }
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            status["error"] = f"{type(err).__name__}: {err}"
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__)) if isinstance(err, BaseException) else ""
            atomic_write_json(output_dir / "failure.json", {"error": status["error"], "traceback": tb})
            log.error("job %s failed: %s", status["overrides"], status["error"])
        else:
            # a run that failed once and was resumed to the end is no longer a failure
            (output_dir / "failure.json").unlink(missing_ok=True)
            value = job_return._return_value
            status["return_value"] = value if isinstance(value, (int, float, str, type(None))) else repr(value)
        atomic_write_json(output_dir / STATUS_FILE, status)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            self.gather(Path(hydra_cfg.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.gather(Path(config.hydra.sweep.dir))

    def gather(self, sweep_dir: Path) -> dict[str, Any]:
        with file_lock(sweep_dir / f".{self.filename}.lock"):
            members = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{STATUS_FILE}"))]
            members.sort(key=lambda m: (m.get("job") is None, m.get("job")))
            failed = [m for m in members if m["status"] == "FAILED"]
            report = {"completed": len(members) - len(failed), "failed": len(failed), "members": members}
            atomic_write_json(sweep_dir / self.filename, report)
        if failed:
            log.error("%d of %d finished sweep members failed; see %s", len(failed), len(members), sweep_dir / self.filename)
        return report
