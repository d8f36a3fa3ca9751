"""The task layer: every evaluate.py mode for every task, end to end through `evaluate()` on tiny real runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from studykit.evaluation.runner import LoadedRun, evaluate, summary_line
from studykit.tasks import TASKS, get_task, task_of
from studykit.training.run import train
from tests.conftest import ROOT, TINY_CXR, compose_cfg

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.progress=null", "trainer.enable_model_summary=false"]
TASK_RUNS = {
    "landmarks": [*TINY_CXR],
    "classification": ["data=ferplus_expression", "data.prepare.limit_per_split={train:32,val:16,test:16}", "data.input_size=32",
                       "data.batch_size=16", "model=resnet18"],
    "distribution": ["data=ferplus_distribution", "data.prepare.limit_per_split={train:32,val:16,test:16}", "data.input_size=32",
                     "data.batch_size=16", "model=resnet18"],
}


@pytest.fixture(scope="module", params=sorted(TASK_RUNS))
def task_sweep(request, tmp_path_factory):
    """Per task, a sweep folder: two seeds of one configuration and one of another (a different phase plan)."""
    folder = tmp_path_factory.mktemp(f"sweep-{request.param}")
    cache = tmp_path_factory.mktemp(f"cache-{request.param}")
    for i, extra in enumerate((["phase=finetune", "seed=1"], ["phase=finetune", "seed=2"], ["phase=head_only", "seed=1"])):
        train(compose_cfg("train", [*TASK_RUNS[request.param], *QUICK, *extra], folder / f"{i}", cache))
    return request.param, folder, cache


def run_evaluate(overrides: list[str], tmp_path: Path, cache: Path) -> dict:
    return evaluate(compose_cfg("evaluate", overrides, tmp_path / "ev", cache))


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.slow
def test_every_evaluate_mode_serves_every_task(task_sweep, tmp_path):
    name, folder, cache = task_sweep
    task = get_task(name)
    primary = task.primary_metric["name"]
    members = sorted(folder.iterdir())

    # run_dir: train.py tested through this same code, so the evaluation of the saved run repeats its report
    trained = json.loads((members[0] / "test_report.json").read_text())
    plain = run_evaluate([f"run_dir={members[0]}", f"output_dir={tmp_path / 'single'}"], tmp_path, cache)
    assert plain[primary] == trained[primary] and plain["primary_metric"] == trained["primary_metric"] == task.primary_metric
    tta = run_evaluate([f"run_dir={members[0]}", "tta=true", "visualize=true", f"output_dir={tmp_path / 'tta'}"], tmp_path, cache)
    assert tta["tta"] is True
    for f in ("test_report.json", "test_report.md", "test_predictions.csv", "test_per_sample.csv"):
        assert (tmp_path / "tta" / f).stat().st_size > 0
    n = len(rows(tmp_path / "tta" / "test_per_sample.csv")) - 1
    assert n == plain.get("n_images", plain.get("n_samples")) > 0

    # ensemble: the mean of the members' TTA predictions, with every member's metrics and their mean +- std
    ens = run_evaluate([f"ensemble={folder}", "tta=true", f"output_dir={tmp_path / 'ens'}"], tmp_path, cache)
    assert len(ens["members"]) == 3 and ens["members_mean_std"][primary]["n"] == 3
    member_values = [m[primary] for m in ens["members"].values()]
    assert ens["members_mean_std"][primary]["mean"] == pytest.approx(np.mean(member_values))
    runs = [LoadedRun(m) for m in members]
    mean = torch.stack([r.predict(tta=True) for r in runs]).mean(0)
    assert ens[primary] == pytest.approx(task.metrics(mean, runs[0])[primary], rel=1e-5, abs=1e-6)

    # sweep: mean +- std per configuration, sorted by the task's primary metric, paired test of the best two
    sweep = run_evaluate([f"sweep={folder}", f"output_dir={tmp_path / 'sweep'}"], tmp_path, cache)
    assert sweep["primary_metric"]["name"] == primary
    assert sorted(r["seeds"] for r in sweep["configurations"]) == [1, 2]
    assert sweep["paired_test_best_two"]["n"] == n
    assert primary in summary_line(sweep)

    # compare: a paired per-sample test of two runs
    paired = run_evaluate([f"compare=[{members[0]},{members[2]}]", f"output_dir={tmp_path / 'cmp'}"], tmp_path, cache)
    assert paired["n"] == n and (tmp_path / "cmp" / "paired_test.json").is_file()
    for report in (plain, ens, paired):
        assert summary_line(report)

    if name == "landmarks":  # the command line is the same generic code for every task: checked once
        cli = subprocess.run([sys.executable, "evaluate.py", f"sweep={folder}", f"output_dir={tmp_path / 'cli'}",
                              f"paths.cache_dir={cache}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert f"{primary} " in cli.stdout and "over 2 seeds" in cli.stdout


@pytest.mark.slow
def test_options_a_mode_does_not_use_are_refused(task_sweep, tmp_path):
    _, folder, cache = task_sweep
    for option in ("tta=true", "split=val"):
        with pytest.raises(ValueError, match="tta=, visualize= and split= apply to run_dir=, ensemble= and folds="):
            run_evaluate([f"sweep={folder}", option], tmp_path, cache)
    with pytest.raises(ValueError, match="checkpoint= applies to run_dir= only"):
        run_evaluate([f"ensemble={folder}", "checkpoint=best.ckpt"], tmp_path, cache)
    with pytest.raises(ValueError, match="overrides= applies to run_dir=, ensemble= and folds="):
        run_evaluate([f"sweep={folder}", "overrides=['data.batch_size=4']"], tmp_path, cache)
    with pytest.raises(ValueError, match="folds= pools the folds' test splits; split= does not apply"):
        run_evaluate([f"folds={folder}", "split=val"], tmp_path, cache)


def test_tasks_are_registered_by_name_and_found_from_configs(tmp_path):
    assert set(TASKS) == {"landmarks", "classification", "distribution"}
    for data, name in (("cxr_landmarks", "landmarks"), ("jaffe", "classification"), ("ferplus_distribution", "distribution")):
        cfg = compose_cfg("train", [f"data={data}"], tmp_path)
        assert task_of(cfg) is get_task(name)
        # a run saved before tasks had names is found by its LightningModule
        with open_dict(cfg):
            del cfg.task["name"]
        assert task_of(cfg) is get_task(name)
    with pytest.raises(KeyError, match="unknown task 'pose'"):
        get_task("pose")


def module_imports() -> dict[str, set[str]]:
    """studykit module -> the studykit modules it imports anywhere in the file (inside functions too: a cycle
    hidden in a function is still a cycle)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src"
    graph = {}
    for path in (src / "studykit").rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("studykit"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("studykit")}
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path m1 -> m2 -> ... -> m1 in the import graph, or None (a package importing its own submodules
    does not count: that is how a package exposes them)."""
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if dep.startswith(module + "."):
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_import_cycles_between_studykit_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": set()}) is None
    graph = module_imports()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the layers: models and evaluation do not import each other; evaluation never imports training (train.py
    # tests through evaluation, and both build runs with studykit.builders); preprocessing never imports a data source
    assert not any(d.startswith("studykit.models") for d in graph["studykit.evaluation.runner"])
    assert not any(d.startswith("studykit.evaluation") for m in graph if m.startswith("studykit.models") for d in graph[m])
    assert not any(d.startswith("studykit.training") for m in graph if m.startswith("studykit.evaluation") for d in graph[m])
    sources = ("studykit.data.ferplus", "studykit.data.cxr_landmarks", "studykit.data.face_sources")
    assert not any(d.startswith(sources) for m in graph if m.startswith("studykit.preprocessing") for d in graph[m])


def test_monitors_derive_from_each_tasks_primary_metric(tmp_path):
    """The primary metric is declared once, by the Task: what checkpoints and early stopping watch follows it."""
    for data, name in (("cxr_landmarks", "landmarks"), ("jaffe", "classification"), ("ferplus_distribution", "distribution")):
        cfg = compose_cfg("train", [f"data={data}"], tmp_path)
        metric = get_task(name).primary_metric
        assert (cfg.task.monitor, cfg.task.monitor_mode) == (f"val/{metric['name']}", metric["mode"])
        assert cfg.callbacks.model_checkpoint.monitor == cfg.callbacks.early_stopping.monitor == f"val/{metric['name']}"


def test_the_entry_points_loops_name_no_task():
    """predict.py, export.py, evaluate.py and train.py ask the run's Task: a new task touches only its own files."""
    src = ROOT / "src" / "studykit"
    for path in ("inference/predict.py", "inference/export.py", "evaluation/runner.py", "training/run.py"):
        text = (src / path).read_text()
        assert not [name for name in TASKS if f'"{name}"' in text], path
