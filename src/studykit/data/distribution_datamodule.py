"""LightningDataModule for label-distribution learning on cached faces and vote distributions: FER+
(`prepare.splits`, studykit.data.ferplus) or any folder with a vote table (`prepare.table`,
studykit.data.distribution_folder; split by its split column, a seeded random split or folds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from studykit.data.augment import build_augmentation
from studykit.data.base import IMAGENET_MEAN, IMAGENET_STD, CachedDataModule, grey_to_input
from studykit.data.cache import CacheStatus
from studykit.data.distribution_folder import prepare_distribution_folder
from studykit.data.ferplus import TARGETS, prepare_ferplus, scheme_target


class DistributionDataset(Dataset):
    """Items: image (3, S, S) normalized float, target (C,) probability distribution, index.

    `target` (training only; evaluation always gets the annotators' distribution) is the FER+ paper's
    training scheme: `distribution` the vote distribution, `majority` a one-hot of the most voted class,
    `sample` a one-hot of a class drawn from the votes afresh at every access (probabilistic label drawing).
    With a KL or cross-entropy loss the three are the paper's three schemes on one network."""

    def __init__(self, tensors: dict[str, Any], input_size: int, train: bool, augment: dict[str, Any],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0,
                 target: str = "distribution"):
        if target not in TARGETS:
            raise ValueError(f"data.train_target must be one of {TARGETS}, got {target!r}")
        self.images = tensors["images"]
        self.distribution = tensors["distribution"]
        self.image_id = tensors["image_id"]
        self.target = target if train else "distribution"
        self.transform = build_augmentation(input_size, train, augment, seed)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image = self.transform(image=self.images[idx].numpy())["image"]
        return {"image": grey_to_input(image, self.mean, self.std), "target": self.training_target(idx), "index": idx}

    def training_target(self, idx: int) -> torch.Tensor:
        return scheme_target(self.distribution[idx], self.target, self.rng)

    def sample_labels(self) -> np.ndarray:
        """The class each item counts as for class-balanced sampling: its majority vote."""
        return self.majority()

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)

    def majority(self) -> np.ndarray:
        return self.distribution.argmax(dim=1).numpy()


class DistributionDataModule(CachedDataModule):
    def __init__(self, name: str, root: str, cache_dir: str, prepare: dict[str, Any], input_size: int = 64,
                 batch_size: int = 64, num_workers: int = 0, augment: dict[str, Any] | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0,
                 train_target: str = "distribution", balanced_sampling: bool = False,
                 fit_splits: Sequence[str] = ("train",), split_by: str = "given", fold: int = 0, n_folds: int = 5,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0):
        super().__init__(name, root, cache_dir, prepare, batch_size, num_workers, mean, std, seed, balanced_sampling,
                         fit_splits, split_by, fold, n_folds, val_fraction, test_fraction, split_seed)
        if train_target not in TARGETS:
            raise ValueError(f"data.train_target must be one of {TARGETS}, got {train_target!r}")
        self.train_target = train_target
        self.input_size = input_size
        self.augment = dict(augment or {})
        self.classes: list[str] = []

    @property
    def num_classes(self) -> int:
        """From the cached data, not from code: another class set needs no change elsewhere."""
        return int(self.load_split("train")["distribution"].shape[1])

    def build_cache(self) -> CacheStatus:
        if "table" in self.prepare_cfg:  # a folder with a vote table (conf/data/distribution_folder.yaml)
            return prepare_distribution_folder(self.root, self.cache_dir, **self.prepare_cfg)
        return prepare_ferplus(self.root, self.cache_dir, **self.prepare_cfg)

    def load_split(self, split: str) -> dict[str, Any]:
        tensors = super().load_split(split)
        self.classes = list(tensors["classes"])
        return tensors

    def dataset(self, split: str, train: bool | None = None) -> DistributionDataset:
        train = (split == "train") if train is None else train
        return DistributionDataset(self.load_split(split), self.input_size, train, self.augment, self.mean, self.std, self.seed,
                                   self.train_target)
