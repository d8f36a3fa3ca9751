"""`evaluate.py`: test a run, a seed ensemble, a whole sweep, or compare two runs.

    python evaluate.py run_dir=outputs/<run>/<time> [tta=true] [visualize=true]
    python evaluate.py ensemble=multirun/<time> [tta=true] [visualize=true]
    python evaluate.py sweep=multirun/<time>                 # mean +- std over seeds per configuration
    python evaluate.py compare=[<run or sweep member A>,<B>]  # paired per-image test
"""

from __future__ import annotations

import csv
import json
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from studykit.evaluation import landmarks as lm
from studykit.evaluation.plots import summary_plots, write_overlays
from studykit.evaluation.stats import mean_std, paired_test
from studykit.metrics.landmark import report_markdown
from studykit.utils.io import atomic_write_json, atomic_write_text, csv_text, safe_torch_load

log = logging.getLogger(__name__)


# ---- runs on disk -------------------------------------------------------------------------------------
def run_config(run_dir: Path) -> DictConfig:
    resolved = Path(run_dir) / "config_resolved.yaml"
    if not resolved.is_file():
        raise FileNotFoundError(f"{resolved} not found: {run_dir} is not a train.py output folder")
    return OmegaConf.load(resolved)


def best_checkpoint(run_dir: Path, cfg: DictConfig) -> Path:
    stages = list(OmegaConf.to_container(cfg.phase.stages))
    path = Path(run_dir) / "checkpoints" / stages[-1] / "best.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run's last phase ({stages[-1]}) saved no best checkpoint")
    return path


def load_trained_module(run_dir: Path, cfg: DictConfig, checkpoint: Path | None = None):
    """The run's LightningModule (laid out as its hardware config says) with the weights of `checkpoint`,
    by default its last phase's best.ckpt; in eval mode."""
    from studykit.training.run import build_module

    module = build_module(cfg)
    module.load_state_dict(safe_torch_load(checkpoint or best_checkpoint(run_dir, cfg))["state_dict"])
    return module.eval()


def sweep_members(folder: Path) -> list[Path]:
    """Finished members of a multirun folder (those with a test report and no failure)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    members = sorted(p.parent for p in folder.glob("*/config_resolved.yaml")
                     if not (p.parent / "failure.json").exists() and (p.parent / "checkpoints").is_dir())
    if not members:
        raise FileNotFoundError(f"{folder} holds no finished train.py runs (folders with config_resolved.yaml and checkpoints)")
    return members


def configuration_key(run_dir: Path) -> str:
    """What distinguishes a member apart from its seed: its Hydra overrides without seed and hydra.*."""
    overrides_file = Path(run_dir) / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        overrides = [o for o in OmegaConf.load(overrides_file) if not str(o).startswith(("seed=", "hydra.", "hydra/"))]
        return " ".join(sorted(map(str, overrides))) or "default"
    name = str(run_config(run_dir).get("run_name", run_dir.name))
    return name.rsplit("-s", 1)[0]


# ---- building blocks ------------------------------------------------------------------------------------
class LoadedRun:
    def __init__(self, run_dir: Path, checkpoint: Path | None = None, overrides: list[str] | None = None):
        from studykit.training.run import build_datamodule

        self.run_dir = Path(run_dir)
        self.cfg = run_config(self.run_dir)
        if overrides:
            self.cfg = OmegaConf.merge(self.cfg, OmegaConf.from_dotlist(list(overrides)))
        self.checkpoint = Path(checkpoint) if checkpoint else best_checkpoint(self.run_dir, self.cfg)
        self.datamodule = build_datamodule(self.cfg)
        self.datamodule.prepare_data()
        self.module = load_trained_module(self.run_dir, self.cfg, self.checkpoint)
        self.test_set = self.datamodule.dataset("test")

    def predict(self, tta: bool) -> torch.Tensor:
        perm = lm.flip_perm_for(self.datamodule.num_landmarks, self.datamodule.flip_pairs)
        width = self.test_set.images.shape[-1]
        # the precision the run was trained and tested with, so evaluation reproduces its numbers
        bf16 = str(OmegaConf.select(self.cfg, "hardware.precision", default="32-true")).startswith("bf16")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return lm.predict(self.module, self.datamodule._loader(self.test_set, shuffle=False), tta=tta, perm=perm, width=width)


def predictions_csv(pred_px: torch.Tensor, image_ids, categories) -> str:
    k = pred_px.shape[1]
    return csv_text(["image_id", "category"] + [f"{axis}{i + 1}" for i in range(k) for axis in ("x", "y")],
                    ([image_ids[i], categories[i]] + [f"{v:.3f}" for v in pred_px[i].reshape(-1).tolist()]
                     for i in range(pred_px.shape[0])))


def per_sample_csv(ids, values, name: str) -> str:
    """One score per test sample (e.g. its mean pixel error): what paired tests between runs compare."""
    return csv_text(["id", name], ([i, f"{v:.6f}"] for i, v in zip(ids, values)))


def read_per_sample(path: Path) -> tuple[list[str], np.ndarray]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: the run predates per-sample scores; re-test it with evaluate.py run_dir=...")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return [r[0] for r in rows], np.asarray([float(r[1]) for r in rows])


def read_predictions(path: Path) -> tuple[list[str], torch.Tensor]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    ids = [r[0] for r in rows]
    values = torch.tensor([[float(v) for v in r[2:]] for r in rows], dtype=torch.float32)
    return ids, values.view(len(rows), -1, 2)


def write_evaluation(out_dir: Path, pred_px: torch.Tensor, test_set, category_names: list[str], title: str,
                     visualize: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    target = lm.targets_px(test_set)
    report = {**(extra or {}), "primary_metric": {"name": "mean_px", "mode": "min"},
              **lm.error_report(pred_px, target, test_set.category, category_names)}
    out_dir.mkdir(parents=True, exist_ok=True)
    cats = [category_names[int(c)] for c in test_set.category]
    atomic_write_json(out_dir / "test_report.json", report)
    atomic_write_text(out_dir / "test_report.md", report_markdown(report, title=title))
    atomic_write_text(out_dir / "test_predictions.csv", predictions_csv(pred_px, test_set.image_id, cats))
    atomic_write_text(out_dir / "test_per_sample.csv", per_sample_csv(test_set.image_id, lm.per_image_errors(pred_px, target).tolist(), "mean_px"))
    if visualize:
        # draw in the cached images' pixels
        scale = torch.tensor([test_set.images.shape[-1], test_set.images.shape[-2]]) / test_set.orig_size[:, None, :]
        images = test_set.images.numpy()
        t_img, p_img = (target * scale).numpy(), (pred_px * scale).numpy()
        point_errors = torch.linalg.vector_norm(pred_px - target, dim=-1).numpy()
        write_overlays(out_dir / "images", images, t_img, p_img, cats, test_set.image_id, point_errors.mean(1))
        summary_plots(out_dir / "plots", point_errors, cats, images, t_img, p_img, test_set.image_id, title="")
    log.info("%s: test mean %.2f px, median %.2f px on %d images", title, report["mean_px"], report["median_px"], report["n_images"])
    return report


# ---- modes ----------------------------------------------------------------------------------------------
def evaluate_single(run_dir: Path, tta: bool = False, visualize: bool = False, out_dir: Path | None = None,
                    checkpoint: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    run = LoadedRun(run_dir, checkpoint, overrides)
    pred = run.predict(tta)
    out_dir = Path(out_dir or Path(run_dir) / ("evaluation_tta" if tta else "evaluation"))
    return write_evaluation(out_dir, pred, run.test_set, run.datamodule.categories, f"{run.cfg.get('run_name')}{' + flip TTA' if tta else ''}",
                            visualize, {"run_dir": str(run_dir), "checkpoint": str(run.checkpoint), "tta": tta})


def evaluate_ensemble(folder: Path, tta: bool = False, visualize: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Average the members' predictions (each with optional flip TTA); report the ensemble and each member."""
    members = sweep_members(folder)
    preds, member_reports, test_set, categories = [], {}, None, None
    for run_dir in members:
        run = LoadedRun(run_dir)
        if test_set is not None and list(run.test_set.image_id) != list(test_set.image_id):
            raise ValueError(f"{run_dir}: its test split differs from the other members'")
        test_set, categories = run.test_set, run.datamodule.categories
        pred = run.predict(tta)
        preds.append(pred)
        member_reports[run_dir.name] = lm.error_report(pred, lm.targets_px(test_set), test_set.category, categories)
        log.info("member %s: %.2f px", run_dir.name, member_reports[run_dir.name]["mean_px"])
    out_dir = Path(out_dir or Path(folder) / ("ensemble_tta" if tta else "ensemble"))
    summary = {key: mean_std(r[key] for r in member_reports.values()) for key in ("mean_px", "median_px", "max_px")}
    report = write_evaluation(
        out_dir, lm.ensemble_mean(preds), test_set, categories, f"ensemble of {len(members)}{' + flip TTA' if tta else ''}", visualize,
        {"ensemble_of": [str(m) for m in members], "tta": tta},
    )
    report["members"] = {name: {k: r[k] for k in ("mean_px", "median_px", "std_px", "max_px", "per_category")}
                         for name, r in member_reports.items()}
    report["members_mean_std"] = summary
    atomic_write_json(out_dir / "test_report.json", report)
    lines = ["", f"## Members ({len(members)})", "", "| member | mean px | median px |", "|---|---|---|"]
    lines += [f"| {n} | {r['mean_px']:.2f} | {r['median_px']:.2f} |" for n, r in member_reports.items()]
    lines.append(f"| mean +- std | {summary['mean_px']['mean']:.2f} +- {summary['mean_px']['std']:.2f} | "
                 f"{summary['median_px']['mean']:.2f} +- {summary['median_px']['std']:.2f} |")
    md = (out_dir / "test_report.md").read_text() + "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "test_report.md", md)
    return report


SKIP_KEYS = {"seed", "n_images", "n_samples", "tta"}


def scalar_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Top-level numbers of a test report, plus one level of per-category means."""
    out = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SKIP_KEYS}
    for cat, row in (report.get("per_category") or {}).items():
        for key in ("mean_px", "mean"):
            if key in row:
                out[f"{cat}_{key}"] = float(row[key])
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
    out_dir.mkdir(parents=True, exist_ok=True)
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
    modes = [m for m in ("run_dir", "ensemble", "sweep", "compare") if cfg.get(m)]
    if len(modes) != 1:
        raise ValueError("give exactly one of run_dir=..., ensemble=..., sweep=..., compare=[a,b]")
    out = Path(cfg.output_dir) if cfg.get("output_dir") else None
    target = str(run_config(Path(cfg.run_dir)).task.module._target_) if modes[0] == "run_dir" else ""
    if target.endswith(("DistributionModule", "ClassificationModule")):
        run = LoadedRun(Path(cfg.run_dir), cfg.get("checkpoint"), list(cfg.get("overrides") or []))
        out = out or Path(cfg.run_dir) / "evaluation"
        if target.endswith("ClassificationModule"):
            from studykit.evaluation.classification import evaluate_classification

            return evaluate_classification(run, out)
        from studykit.evaluation.distribution import evaluate_distribution

        return evaluate_distribution(run, out, cfg.visualize, cfg.get("samples"))
    if modes[0] == "run_dir":
        return evaluate_single(Path(cfg.run_dir), cfg.tta, cfg.visualize, out, cfg.get("checkpoint"), list(cfg.get("overrides") or []))
    if modes[0] == "ensemble":
        return evaluate_ensemble(Path(cfg.ensemble), cfg.tta, cfg.visualize, out)
    if modes[0] == "sweep":
        return summarize_sweep(Path(cfg.sweep), out)
    if len(cfg.compare) != 2:
        raise ValueError("compare needs two run folders: compare=[A,B]")
    return compare_runs(Path(cfg.compare[0]), Path(cfg.compare[1]), out)
