"""OmegaConf resolvers used by the config tree; imported by every entry point and the tests."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def resumed_run_dir(ckpt_path: str | None, default: str) -> str:
    """hydra.run.dir: a resume (ckpt_path=<run>/checkpoints/<stage>/last.ckpt) continues <run>, else `default`."""
    if not ckpt_path:
        return default
    stage_dir = os.path.dirname(os.path.abspath(os.path.expanduser(str(ckpt_path))))
    checkpoints = os.path.dirname(stage_dir)
    return os.path.dirname(checkpoints) if os.path.basename(checkpoints) == "checkpoints" else default


def task_monitor(task_name: str, field: str) -> str:
    """task.monitor / task.monitor_mode: the registered Task's primary metric, logged on the validation split
    (`val/<name>`), and whether lower or higher is better - declared once, by the Task."""
    from studykit.tasks import get_task

    metric = get_task(str(task_name)).primary_metric
    if field not in ("name", "mode"):
        raise ValueError(f"task_monitor field must be name or mode, got {field!r}")
    return f"val/{metric['name']}" if field == "name" else metric["mode"]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda p: os.path.abspath(os.path.expanduser(str(p))))
    if not OmegaConf.has_resolver("resumed_run_dir"):
        OmegaConf.register_new_resolver("resumed_run_dir", resumed_run_dir)
    if not OmegaConf.has_resolver("task_monitor"):
        OmegaConf.register_new_resolver("task_monitor", task_monitor)


register_resolvers()


class PairingError(ValueError):
    """A composed config whose groups do not fit together (e.g. a landmark loss on a classification task)."""


def _choice(group: str, fallback: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return f"{group}: {fallback}"


def loss_tasks(loss_cfg) -> set[str] | None:
    """The tasks a loss config serves (a weighted sum: those all its terms serve); None when unrestricted."""
    from hydra.utils import get_class

    served = getattr(get_class(str(loss_cfg._target_)), "tasks", None)
    if served is None and "terms" in loss_cfg:
        sets = [loss_tasks(term.loss) for term in loss_cfg.terms.values() if term is not None and "loss" in term]
        sets = [s for s in sets if s is not None]
        return set.intersection(*sets) if sets else None
    return set(served) if served is not None else None


def check_pairing(cfg) -> None:
    """Refuse, before anything is built or resolved, a data set / loss that does not serve the chosen task,
    naming the choices; a data config brings its own task and loss, so this fires only when a command line
    or experiment pairs them otherwise."""
    from hydra.utils import get_class

    from studykit.tasks import task_of

    task = task_of(cfg)
    task_choice = _choice("task", task.name)
    data_target = str(cfg.data._target_)
    if task.datamodule_classes and not any(issubclass(get_class(data_target), get_class(c)) for c in task.datamodule_classes):
        raise PairingError(f"{_choice('data', data_target)} does not serve {task_choice}: its data module {data_target} is none "
                           f"of the task's {list(task.datamodule_classes)}. Leave task= out to use the data set's own task.")
    served = loss_tasks(cfg.loss)
    if served is not None and task.name not in served:
        raise PairingError(f"{_choice('loss', str(cfg.loss._target_))} is a loss for {sorted(served)}, not for {task_choice}; "
                           f"leave loss= out to use the data set's default loss")
