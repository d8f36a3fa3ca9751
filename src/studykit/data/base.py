"""What every task's DataModule shares: prepare (or find) a cache, then read only its `.pt` tensors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, WeightedRandomSampler

from studykit.data.cache import CacheStatus, load_cached, read_manifest

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def grey_to_input(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W) grey image -> normalized float (3, H, W), the input of an RGB ImageNet backbone."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0).unsqueeze(0).expand(3, -1, -1)
    return (tensor - mean) / std


def balanced_sampler(labels: np.ndarray, seed: int) -> WeightedRandomSampler:
    """Draws items with probability 1 / (count of their class): every class equally often per epoch in
    expectation, the epoch as long as the data set (rare classes repeated, frequent ones subsampled)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(int(seed)))


class SplitsDataset(ConcatDataset):
    """The training items of several splits (`data.fit_splits`), each split with its training transforms."""

    def reseed(self, seed: int) -> None:
        for offset, part in enumerate(self.datasets):
            part.reseed(seed + offset)  # the parts must not repeat each other's augmentation draws

    def sample_labels(self) -> np.ndarray:
        return np.concatenate([part.sample_labels() for part in self.datasets])


def check_fit_splits(fit_splits: Sequence[str]) -> tuple[str, ...]:
    splits = tuple(str(s) for s in fit_splits)
    if not splits:
        raise ValueError("data.fit_splits is empty: name the splits to train on, e.g. [train] or [train, val]")
    if "test" in splits:
        raise ValueError(f"data.fit_splits={list(splits)} would train on the test split, which only reports results")
    if len(set(splits)) != len(splits):
        raise ValueError(f"data.fit_splits={list(splits)} names a split twice")
    return splits


def fits_on_val(cfg: Any) -> bool:
    """Whether a run config trains on the validation split (`data.fit_splits: [train, val]`, a refit of a recipe
    chosen on validation). No held-out split is left to choose an epoch by or stop early on, so such a run
    skips validation and tests its last epoch (last.ckpt)."""
    return "val" in list(OmegaConf.select(cfg, "data.fit_splits", default=None) or ["train"])


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


class CachedDataModule(L.LightningDataModule):
    """Subclasses implement `build_cache()` (returns the CacheStatus of their preparation function) and
    `dataset(split, train)`; splits are loaded from `<cache folder>/<split>.pt` with weights_only=True.

    fit_splits: the splits trained on, [train] by default. [train, val] refits a recipe chosen on validation
    on both splits (more images, no held-out split left: the trainer then skips validation, see
    `fits_on_val`); the test split is refused."""

    def __init__(self, name: str, root: str, cache_dir: str, prepare: dict[str, Any], batch_size: int, num_workers: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0,
                 balanced_sampling: bool = False, fit_splits: Sequence[str] = ("train",)):
        super().__init__()
        self.name = name
        self.root = root
        self.cache_dir = cache_dir
        self.prepare_cfg = dict(prepare)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.balanced_sampling = bool(balanced_sampling)
        self.fit_splits = check_fit_splits(fit_splits)
        self.cache_folder: Path | None = None
        self.splits: dict[str, dict[str, Any]] = {}

    def build_cache(self) -> CacheStatus:
        raise NotImplementedError

    def dataset(self, split: str, train: bool | None = None) -> Dataset:
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.cache_folder is not None:
            return  # already checked in this process (train.py prepares before Lightning's own call)
        status = self.build_cache()
        self.cache_folder = status.path
        log.info("%s cache: %s (%s)", self.name, status.path, status.reason)

    def manifest(self) -> dict[str, Any]:
        if self.cache_folder is None:
            self.prepare_data()
        return read_manifest(self.cache_folder)

    def load_split(self, split: str) -> dict[str, Any]:
        if split not in self.splits:
            if self.cache_folder is None:
                self.prepare_data()
            tensors = load_cached(self.cache_folder, f"{split}.pt")
            if tensors["images"].shape[0] == 0:
                raise RuntimeError(f"split {split!r} in {self.cache_folder} holds no images; see report.json there")
            self.splits[split] = tensors
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = self.training_set()
            self.val_set = self.dataset("val")
        if stage in (None, "validate"):
            self.val_set = self.dataset("val")
        if stage in (None, "test", "predict"):
            self.test_set = self.dataset("test")

    def training_set(self) -> Dataset:
        parts = [self.dataset(split, train=True) for split in self.fit_splits]
        return parts[0] if len(parts) == 1 else SplitsDataset(parts)

    def _loader(self, data: Dataset, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          worker_init_fn=_worker_init if self.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        sampler = balanced_sampler(self.train_set.sample_labels(), self.seed) if self.balanced_sampling else None
        return self._loader(self.train_set, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
