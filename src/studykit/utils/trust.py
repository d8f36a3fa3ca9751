"""What a run folder from elsewhere may make this process build.

A run's `config_resolved.yaml` names the classes Hydra instantiates (`_target_`); a crafted one could name
`os.system` or a helper that deletes files, and loading checkpoints with `weights_only=True` would then protect
nothing. Before evaluate.py, predict.py or export.py build anything from a run folder, every `_target_` in its
config is checked:

- its dotted path must start with a trusted prefix: the project's own code, torch's optimizers and schedulers,
  Lightning's callbacks and loggers (`DEFAULT_PREFIXES`), plus any the user adds for their own code
  (`trusted_targets=[mylab.]` on the command line, `allow`);
- under the default prefixes it must be a class, or one of the project's scheduler factories
  (`DEFAULT_FUNCTIONS`): the project's helper functions (file writers, cache builders) are never callable
  from a config. Under a prefix the user added, functions are allowed too: that code is the user's.

Anything else is refused by name, with the key that holds it, before any module it names is imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

DEFAULT_PREFIXES = ("studykit.", "torch.optim.", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.")
DEFAULT_FUNCTIONS = ("studykit.models.base.warmup_cosine",)
_USER_PREFIXES: set[str] = set()


class UntrustedTargetError(ValueError):
    """A run config names code outside the trusted prefixes."""


def allow(prefixes: Iterable[str] | None) -> None:
    """Trust `prefixes` (e.g. "mylab.models.") for this process, classes and functions alike."""
    for prefix in prefixes or ():
        prefix = str(prefix).strip()
        if prefix:
            _USER_PREFIXES.add(prefix)


def targets(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every (key path, _target_) in a plain config tree (interpolations left as written)."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return found
    for key, value in items:
        path = f"{where}.{key}" if where else key
        if key == "_target_":
            found.append((path, str(value)))
        else:
            found += targets(value, path)
    return found


def check_target(target: str) -> str | None:
    """Why `target` may not be built, or None when it may."""
    if any(target.startswith(p) for p in _USER_PREFIXES):
        return None
    if not any(target.startswith(p) for p in DEFAULT_PREFIXES):
        return "it lies outside the trusted prefixes " + str(sorted(set(DEFAULT_PREFIXES) | _USER_PREFIXES))
    if target in DEFAULT_FUNCTIONS:
        return None
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001 - reported with the target named
        return f"it cannot be imported ({err})"
    if not isinstance(obj, type):
        return "only classes are built from a run's config (a function is allowed only under a prefix you trust)"
    return None


def check_config(cfg: DictConfig | dict, source: str) -> None:
    """Refuse a config (from the file `source`) that names an untrusted `_target_`; nothing is imported from
    outside the trusted prefixes."""
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    problems = [f"{path}: {target!r} ({why})" for path, target in targets(tree) if (why := check_target(target))]
    if problems:
        raise UntrustedTargetError(
            f"{source} names code this process will not build: " + "; ".join(problems)
            + ". If it is your own code, trust it with trusted_targets=[<module prefix>].")
