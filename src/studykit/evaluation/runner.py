"""`evaluate.py`: test a run, a seed ensemble, a cross-validation, a whole sweep, or compare two runs - for every task.

    python evaluate.py run_dir=outputs/<run>/<time> [tta=true] [visualize=true] [split=val]
    python evaluate.py ensemble=multirun/<time> [tta=true] [visualize=true] [split=val]
    python evaluate.py folds=multirun/<time> [tta=true]        # the folds' test predictions pooled
    python evaluate.py sweep=multirun/<time>                 # mean +- std over seeds per configuration
    python evaluate.py compare=[<run or sweep member A>,<B>]  # paired per-sample test

The modes are generic; what differs per task (prediction, metrics, files) comes from its registered Task
(`studykit.tasks`), found from the run's config.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from studykit.builders import build_datamodule
from studykit.data.base import fits_on_val
from studykit.evaluation.files import (  # noqa: F401  (re-exported: the run-folder helpers)
    best_checkpoint,
    configuration_key,
    landmark_predictions_csv,
    load_trained_module,
    per_sample_csv,
    read_landmark_predictions,
    read_per_sample,
    run_config,
    sweep_members,
    without_pretrained,
)
from studykit.evaluation.stats import mean_std, paired_test
from studykit.tasks import Task, task_of
from studykit.utils import trust
from studykit.utils.io import atomic_write_json, atomic_write_text, guard_outputs, make_dirs

log = logging.getLogger(__name__)


SPLITS = ("test", "val")


class LoadedRun:
    """A finished run ready to predict its test split: config, task, data module and trained module.
    With split="val" the validation split stands in for the test split (`test_set`, `test_loader`), so
    choices such as TTA or an ensemble can be made on validation before the test split is read."""

    def __init__(self, run_dir: Path, checkpoint: Path | None = None, overrides: list[str] | None = None,
                 split: str = "test"):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: evaluate one of {SPLITS}")
        self.split = split

        self.run_dir = Path(run_dir)
        self.cfg = run_config(self.run_dir)
        if overrides:
            self.cfg = OmegaConf.merge(self.cfg, OmegaConf.from_dotlist(list(overrides)))
        self.task: Task = task_of(self.cfg)
        if split == "val" and fits_on_val(self.cfg):
            raise ValueError(f"{self.run_dir} trained on the validation split (data.fit_splits="
                             f"{list(self.cfg.data.fit_splits)}): its validation error measures nothing held out")
        self.checkpoint = Path(checkpoint) if checkpoint else best_checkpoint(self.run_dir, self.cfg)
        self.datamodule = build_datamodule(self.cfg)
        self.datamodule.prepare_data()
        self.datamodule.setup("test" if split == "test" else "validate")
        self.module = load_trained_module(self.run_dir, self.cfg, self.checkpoint)
        self.test_set = self.datamodule.test_set if split == "test" else self.datamodule.val_set

    @classmethod
    def from_training(cls, run_dir: Path, cfg: DictConfig, module: Any, datamodule: Any, checkpoint: str | Path | None) -> LoadedRun:
        """The run train.py has in memory (its tested weights already in `module`), so that its test at the end of
        training is evaluated by the same code as `evaluate.py run_dir=...`."""
        run = cls.__new__(cls)
        run.split, run.run_dir, run.cfg, run.task = "test", Path(run_dir), cfg, task_of(cfg)
        run.checkpoint = Path(checkpoint) if checkpoint else None
        datamodule.setup("test")
        run.datamodule, run.module, run.test_set = datamodule, module.eval(), datamodule.test_set
        return run

    def test_loader(self):
        return self.datamodule.test_dataloader() if self.split == "test" else self.datamodule.val_dataloader()

    def predict(self, tta: bool) -> torch.Tensor:
        # the precision the run was trained and tested with, so evaluation reproduces its numbers
        bf16 = str(OmegaConf.select(self.cfg, "hardware.precision", default="32-true")).startswith("bf16")
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            return self.task.predict(self, tta).float()


def run_fields(run: LoadedRun) -> dict[str, Any]:
    """What identifies the run and the weights a report describes."""
    cfg = run.cfg
    return {"run_name": cfg.get("run_name"), "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint) if run.checkpoint else None,
            "seed": cfg.get("seed"), "model": OmegaConf.select(cfg, "model.backbone.name"), "task": run.task.name,
            "loss": OmegaConf.select(cfg, "loss._target_")}


def write_evaluation(out_dir: Path, task: Task, pred: torch.Tensor, run: LoadedRun, title: str, visualize: bool,
                     extra: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """test_report.json (with its primary metric) and the task's files for `pred` on the run's test split."""
    report = {**extra, "split": run.split, "primary_metric": task.primary_metric, **task.metrics(pred, run)}
    make_dirs(out_dir)
    atomic_write_json(out_dir / "test_report.json", report)
    task.write(out_dir, pred, run, report, title, visualize, options or {})
    log.info("%s: %s", title, task.summary_line(report))
    return report


# ---- modes ----------------------------------------------------------------------------------------------
def default_folder(name: str, tta: bool, split: str) -> str:
    """evaluation, evaluation_tta, evaluation_val, evaluation_val_tta (and the same for ensemble)."""
    return name + ("_val" if split == "val" else "") + ("_tta" if tta else "")


def title_suffix(tta_views: str | None, split: str) -> str:
    return (f" + TTA ({tta_views})" if tta_views else "") + (" (validation split)" if split == "val" else "")


def evaluate_loaded(run: LoadedRun, tta: bool = False, out_dir: Path | None = None, visualize: bool = False,
                    options: dict[str, Any] | None = None, title: str | None = None) -> dict[str, Any]:
    """The report of one loaded run: its predictions (with TTA), the task's metrics and files in `out_dir`.
    evaluate.py run_dir=... and train.py's test at the end of training both come here."""
    out_dir = Path(out_dir or run.run_dir / default_folder("evaluation", tta, run.split))
    views = run.task.tta_views(run) if tta else None
    title = title or str(run.cfg.get("run_name"))
    return write_evaluation(out_dir, run.task, run.predict(tta), run, f"{title}{title_suffix(views, run.split)}", visualize,
                            {**run_fields(run), "tta": tta, "tta_views": views}, options)


def evaluate_single(run_dir: Path, tta: bool = False, visualize: bool = False, out_dir: Path | None = None,
                    checkpoint: str | None = None, overrides: list[str] | None = None,
                    options: dict[str, Any] | None = None, split: str = "test") -> dict[str, Any]:
    return evaluate_loaded(LoadedRun(run_dir, checkpoint, overrides, split), tta, out_dir, visualize, options)


def evaluate_ensemble(folder: Path, tta: bool = False, visualize: bool = False, out_dir: Path | None = None,
                      options: dict[str, Any] | None = None, split: str = "test",
                      overrides: list[str] | None = None) -> dict[str, Any]:
    """Average the members' predictions (each with optional TTA); report the ensemble and each member.
    `overrides` (a dotlist) applies to every member's config, e.g. a TTA setting some members predate."""
    members = sweep_members(folder)
    preds, member_reports, first = [], {}, None
    for run_dir in members:
        run = LoadedRun(run_dir, overrides=overrides, split=split)
        if first is None:
            first = run
        elif run.task is not first.task:
            raise ValueError(f"{run_dir}: its task ({run.task.name}) differs from the other members' ({first.task.name})")
        elif list(run.test_set.image_id) != list(first.test_set.image_id):
            raise ValueError(f"{run_dir}: its {split} split differs from the other members'")
        pred = run.predict(tta)
        preds.append(pred)
        member_reports[run_dir.name] = run.task.metrics(pred, run)
        log.info("member %s: %s", run_dir.name, run.task.summary_line(member_reports[run_dir.name]))
    task = first.task
    out_dir = Path(out_dir or Path(folder) / default_folder("ensemble", tta, split))
    views = task.tta_views(first) if tta else None
    report = write_evaluation(out_dir, task, task.combine(preds), first, f"ensemble of {len(members)}{title_suffix(views, split)}",
                              visualize, {"ensemble_of": [str(m) for m in members], "tta": tta, "tta_views": views}, options)
    report["members"] = {name: scalar_metrics(r) for name, r in member_reports.items()}
    names = [k for k in report["members"][members[0].name] if all(k in r for r in report["members"].values())]
    summary = {k: mean_std(r[k] for r in report["members"].values()) for k in names}
    report["members_mean_std"] = summary
    atomic_write_json(out_dir / "test_report.json", report)
    primary = task.primary_metric["name"]
    lines = ["", f"## Members ({len(members)})", "", f"| member | {primary} |", "|---|---|"]
    lines += [f"| {n} | {r[primary]:.4g} |" for n, r in report["members"].items()]
    lines.append(f"| mean +- std | {summary[primary]['mean']:.4g} +- {summary[primary]['std']:.2g} |")
    atomic_write_text(out_dir / "test_report.md", (out_dir / "test_report.md").read_text() + "\n".join(lines) + "\n")
    return report


class PooledRun:
    """The folds of a cross-validation as one run: the first fold's data module and config, and as test set
    every fold's test samples (each once), so the task's report covers the pooled predictions."""

    def __init__(self, folder: Path, first: LoadedRun, parts: list[dict[str, Any]]):
        from studykit.data.base import concat

        self.run_dir, self.cfg, self.task, self.split = Path(folder), first.cfg, first.task, "test"
        self.checkpoint, self.module, self.datamodule = None, first.module, first.datamodule
        self.datamodule.splits["pooled"] = concat(parts)
        self.test_set = self.datamodule.dataset("pooled", train=False)

    def test_loader(self):
        raise RuntimeError("a pooled cross-validation holds predictions, not a network to run")


FOLD_KEYS = ("fold", "test_fold", "val_fold")


def evaluate_folds(folder: Path, tta: bool = False, visualize: bool = False, out_dir: Path | None = None,
                   options: dict[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """A cross-validation sweep (`train.py -m ... data.fold=0,...,k-1`): every fold's test predictions pooled, each
    sample exactly once, and the task's full report on them; per-fold reports and their mean +- std beside it.
    Members that test the same samples (seeds of one fold) are averaged first, as an ensemble. Refused when the
    folds test a sample twice, leave one untested, or differ in anything but the fold."""
    members = sweep_members(folder)
    runs = [LoadedRun(m, overrides=overrides) for m in members]
    first = runs[0]

    def data_without_fold(run: LoadedRun) -> dict[str, Any]:
        data = OmegaConf.to_container(run.cfg.data, resolve=True)
        return {k: v for k, v in data.items() if k not in FOLD_KEYS and k != "seed"}

    for run in runs[1:]:
        if run.task is not first.task:
            raise ValueError(f"{run.run_dir}: its task ({run.task.name}) differs from the other folds' ({first.task.name})")
        if data_without_fold(run) != data_without_fold(first):
            raise ValueError(f"{run.run_dir}: its data config differs from {first.run_dir}'s in more than the fold")
    folds: dict[tuple[str, ...], list[LoadedRun]] = {}
    for run in runs:
        folds.setdefault(tuple(run.test_set.image_id), []).append(run)
    # coverage: the folds' test sets are disjoint and together hold every sample of the data set
    tested: dict[str, str] = {}
    for ids, fold_runs in folds.items():
        for sample in ids:
            if sample in tested:
                raise ValueError(f"sample {sample!r} is tested by {fold_runs[0].run_dir} and by {tested[sample]}: "
                                 "the runs are not folds of one cross-validation")
            tested[sample] = str(fold_runs[0].run_dir)
    everything = {i for split in ("train", "val", "test") for i in first.datamodule.load_split(split)["image_id"]}
    missing = sorted(everything - set(tested))
    if missing:
        raise ValueError(f"{len(missing)} of {len(everything)} samples are in no fold's test split (e.g. {missing[:3]}): "
                         f"{folder} holds {len(folds)} folds; run the missing ones (data.fold=...)")
    preds, parts, per_fold = [], [], {}
    for fold_runs in folds.values():
        pred = first.task.combine([run.predict(tta) for run in fold_runs])
        run = fold_runs[0]
        per_fold[run.run_dir.name] = first.task.metrics(pred, run)
        log.info("fold %s: %s", run.run_dir.name, first.task.summary_line(per_fold[run.run_dir.name]))
        preds.append(pred)
        parts.append(run.datamodule.load_split("test"))
    pooled = PooledRun(folder, first, parts)
    out_dir = Path(out_dir or Path(folder) / default_folder("cross_validation", tta, "test"))
    views = first.task.tta_views(first) if tta else None
    report = write_evaluation(out_dir, first.task, torch.cat(preds), pooled,
                              f"cross-validation, {len(folds)} folds pooled{title_suffix(views, 'test')}", visualize,
                              {"folds": {name: [str(r.run_dir) for r in rs] for name, rs in zip(per_fold, folds.values())},
                               "coverage": {"samples": len(everything), "tested_once": len(tested)}, "tta": tta, "tta_views": views},
                              options)
    report["per_fold"] = {name: scalar_metrics(r) for name, r in per_fold.items()}
    names = [k for k in next(iter(report["per_fold"].values())) if all(k in r for r in report["per_fold"].values())]
    report["per_fold_mean_std"] = {k: mean_std(r[k] for r in report["per_fold"].values()) for k in names}
    atomic_write_json(out_dir / "test_report.json", report)
    primary = first.task.primary_metric["name"]
    summary = report["per_fold_mean_std"][primary]
    lines = ["", f"## Folds ({len(folds)}; every one of the {len(everything)} samples tested once)", "",
             f"| fold | {primary} | samples |", "|---|---|---|"]
    lines += [f"| {n} | {r[primary]:.4g} | {len(ids)} |" for (n, r), ids in zip(report["per_fold"].items(), folds)]
    lines.append(f"| mean +- std over folds | {summary['mean']:.4g} +- {summary['std']:.2g} | |")
    atomic_write_text(out_dir / "test_report.md", (out_dir / "test_report.md").read_text() + "\n".join(lines) + "\n")
    return report


SKIP_KEYS = {"seed", "n_images", "n_samples", "tta", "split"}


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Top-level numbers of a test report, plus one level of per-category means."""
    out = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP_KEYS}
    for cat, row in (report.get("per_category") or {}).items():
        for key in ("mean_px", "mean"):
            if key in row:
                out[f"{cat}_{key}"] = float(row[key])
    for name, row in (report.get("per_class") or {}).items():
        for key in ("f1", "kl"):
            if key in row:
                out[f"{name}_{key}"] = float(row[key])
    return out


def summarize_sweep(folder: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Every test metric as mean +- std over seeds for each configuration of a sweep, and a paired test
    between the two best configurations over the test samples (per-sample scores averaged over seeds)."""
    members = sweep_members(folder)
    groups: dict[str, list[Path]] = {}
    for m in members:
        groups.setdefault(configuration_key(m), []).append(m)
    primary = json.loads((members[0] / "test_report.json").read_text()).get("primary_metric", {"name": "mean_px", "mode": "min"})
    rows, per_sample = [], {}
    for key, runs in groups.items():
        reports = [scalar_metrics(json.loads((r / "test_report.json").read_text())) for r in runs]
        names = [k for k in reports[0] if all(k in rep for rep in reports)]
        rows.append({"configuration": key, "seeds": len(runs), **{n: mean_std(rep[n] for rep in reports) for n in names}})
        scores = [read_per_sample(r / "test_per_sample.csv") for r in runs]
        if any(ids != scores[0][0] for ids, _ in scores):
            raise ValueError(f"members of {key!r} scored different test samples")
        per_sample[key] = np.mean([v for _, v in scores], axis=0)
    sign = 1 if primary.get("mode", "min") == "min" else -1
    rows.sort(key=lambda r: sign * r[primary["name"]]["mean"])
    result: dict[str, Any] = {"sweep": str(folder), "primary_metric": primary, "configurations": rows}
    if len(rows) >= 2:
        a, b = rows[0]["configuration"], rows[1]["configuration"]
        result["paired_test_best_two"] = paired_test(per_sample[a], per_sample[b], (a, b))
    out_dir = Path(out_dir or Path(folder) / "summary")
    make_dirs(out_dir)
    atomic_write_json(out_dir / "sweep_summary.json", result)
    metrics = [k for k in rows[0] if k not in ("configuration", "seeds")]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["configuration", "seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    for r in rows:
        writer.writerow([r["configuration"], r["seeds"]] + [f"{r[m][s]:.6g}" if m in r else "" for m in metrics for s in ("mean", "std")])
    atomic_write_text(out_dir / "sweep_summary.csv", buf.getvalue())
    md = ["# Sweep summary", "", f"{folder}; sorted by {primary['name']} ({primary.get('mode', 'min')}), mean +- std over seeds", "",
          "| configuration | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for r in rows:
        md.append(f"| {r['configuration']} | {r['seeds']} | " + " | ".join(
            f"{r[m]['mean']:.4g} +- {r[m]['std']:.2g}" if m in r else "" for m in metrics) + " |")
    if "paired_test_best_two" in result:
        t = result["paired_test_best_two"]
        md += ["", f"Paired test of per-sample {primary['name']} over {t['n']} test samples between the best two "
               f"configurations: mean difference {t['mean_difference']:.4g}, t-test p = {t['t_pvalue']}, "
               f"Wilcoxon p = {t['wilcoxon_pvalue']}"]
    atomic_write_text(out_dir / "sweep_summary.md", "\n".join(md) + "\n")
    return result


def compare_runs(run_a: Path, run_b: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """Paired test of two runs' per-sample test scores."""
    ids_a, a = read_per_sample(Path(run_a) / "test_per_sample.csv")
    ids_b, b = read_per_sample(Path(run_b) / "test_per_sample.csv")
    if ids_a != ids_b:
        raise ValueError(f"{run_a} and {run_b} were tested on different samples")
    result = paired_test(a, b, (str(run_a), str(run_b)))
    out_dir = Path(out_dir or Path(run_a) / "comparison")
    atomic_write_json(out_dir / "paired_test.json", result)
    return result


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    modes = [m for m in ("run_dir", "ensemble", "folds", "sweep", "compare") if cfg.get(m)]
    if len(modes) != 1:
        raise ValueError("give exactly one of run_dir=..., ensemble=..., folds=..., sweep=..., compare=[a,b]")
    out = Path(cfg.output_dir) if cfg.get("output_dir") else None
    trust.allow(cfg.get("trusted_targets"))
    folder = cfg.get(modes[0]) if modes[0] != "compare" else cfg.compare[0]
    guard_outputs(cfg.paths.get("data_root"), out or Path(folder))
    options = {"samples": list(cfg.samples) if cfg.get("samples") else None}
    split = cfg.get("split") or "test"
    if modes[0] == "run_dir":
        return evaluate_single(Path(cfg.run_dir), cfg.tta, cfg.visualize, out, cfg.get("checkpoint"),
                               list(cfg.get("overrides") or []), options, split)
    if cfg.get("checkpoint"):
        raise ValueError("checkpoint= applies to run_dir= only")
    if modes[0] == "ensemble":
        return evaluate_ensemble(Path(cfg.ensemble), cfg.tta, cfg.visualize, out, options, split, list(cfg.get("overrides") or []))
    if modes[0] == "folds":
        if split != "test":
            raise ValueError("folds= pools the folds' test splits; split= does not apply")
        return evaluate_folds(Path(cfg.folds), cfg.tta, cfg.visualize, out, options, list(cfg.get("overrides") or []))
    if cfg.get("overrides"):
        raise ValueError(f"overrides= applies to run_dir=, ensemble= and folds=; {modes[0]}= reads the members' own test reports")
    if cfg.tta or cfg.visualize or split != "test":
        raise ValueError(f"tta=, visualize= and split= apply to run_dir=, ensemble= and folds=; {modes[0]}= reads the members' own "
                         "test reports")
    if modes[0] == "sweep":
        return summarize_sweep(Path(cfg.sweep), out)
    if len(cfg.compare) != 2:
        raise ValueError("compare needs two run folders: compare=[A,B]")
    return compare_runs(Path(cfg.compare[0]), Path(cfg.compare[1]), out)


def summary_line(report: dict[str, Any]) -> str:
    """What evaluate.py prints for the report of any mode."""
    if "configurations" in report:
        primary = report["primary_metric"]["name"]
        return "\n".join(f"{row['configuration']}: {primary} {row[primary]['mean']:.4g} +- {row[primary]['std']:.2g} over "
                         f"{row['seeds']} seeds" for row in report["configurations"])
    if "mean_difference" in report:
        return (f"paired test over {report['n']} samples: mean {report['mean_a']:.4g} vs {report['mean_b']:.4g}, "
                f"t-test p = {report['t_pvalue']}, Wilcoxon p = {report['wilcoxon_pvalue']}")
    from studykit.tasks import TASKS

    task = next(t for t in TASKS.values() if t.primary_metric == report.get("primary_metric"))
    return task.summary_line(report)
