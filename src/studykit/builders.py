"""What a run is built of, from its config: the data module, the task's LightningModule with its loss, and
the hardware layout. Used by training, evaluation, prediction and export alike (below all of them)."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def normalization(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """The input mean and std of the run's backbone: the model owns normalisation (model.input_mean/std)."""
    return list(cfg.model.input_mean), list(cfg.model.input_std)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The data module, normalising images as the model asks (the data config holds no statistics)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("mean", "std"):  # runs saved before the model owned normalisation have them in data
        data.pop(key, None)
    if "model" not in cfg:  # prepare.py: building the cache needs no normalisation
        return instantiate(data)
    mean, std = normalization(cfg)
    return instantiate(data, mean=mean, std=std)


DATA_FILLED = ("num_classes", "classes", "in_chans", "num_landmarks", "categories")


def fill_from_data(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Set what the task leaves open (???), such as the number of classes, from the prepared data, so the
    saved config holds the real values."""
    for key in DATA_FILLED:
        if key in cfg.task.module.keys() and OmegaConf.is_missing(cfg.task.module, key):
            cfg.task.module[key] = getattr(datamodule, key)


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule | None = None) -> L.LightningModule:
    """The task's LightningModule with its loss, laid out and compiled as `hardware` says. What the task
    leaves open (???) comes from `datamodule` when given (train.py fills it before saving the config)."""
    if datamodule is not None:
        fill_from_data(cfg, datamodule)
    loss = instantiate(cfg.loss, _convert_="all")
    module = instantiate(cfg.task.module, loss=loss)
    apply_hardware(module, cfg.get("hardware") or {})
    return module


def apply_hardware(module: L.LightningModule, hardware: DictConfig | dict) -> None:
    """hardware.channels_last: weights and batches in NHWC; hardware.compile: torch.compile the network in
    place (its state_dict keys stay the same, so checkpoints load either way)."""
    if hardware.get("channels_last", False):
        module.use_channels_last(True)
    if hardware.get("compile", False):
        module.net.compile()
