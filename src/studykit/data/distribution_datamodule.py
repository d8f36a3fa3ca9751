"""LightningDataModule for label-distribution learning on cached FER+ faces and vote distributions."""

from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from studykit.data.base import IMAGENET_MEAN, IMAGENET_STD, CachedDataModule, grey_to_input
from studykit.data.cache import CacheStatus
from studykit.data.ferplus import prepare_ferplus


def face_transforms(input_size: int, train: bool, augment: dict[str, Any], seed: int) -> A.Compose:
    steps: list[A.BasicTransform] = []
    if train:
        if augment.get("hflip_p", 0):
            steps.append(A.HorizontalFlip(p=augment["hflip_p"]))  # expressions are mirror-symmetric
        if augment.get("rotate_limit", 0):
            limit = float(augment["rotate_limit"])
            steps.append(A.Affine(rotate=(-limit, limit), scale=(0.9, 1.1), border_mode=0, fill=0, p=augment.get("rotate_p", 0.5)))
        if augment.get("brightness", 0) or augment.get("contrast", 0):
            steps.append(A.RandomBrightnessContrast(augment.get("brightness", 0.0), augment.get("contrast", 0.0), p=0.5))
    steps.append(A.Resize(input_size, input_size))
    return A.Compose(steps, seed=seed)


class DistributionDataset(Dataset):
    """Items: image (3, S, S) normalized float, target (C,) probability distribution, index."""

    def __init__(self, tensors: dict[str, Any], input_size: int, train: bool, augment: dict[str, Any],
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0):
        self.images = tensors["images"]
        self.distribution = tensors["distribution"]
        self.image_id = tensors["image_id"]
        self.transform = face_transforms(input_size, train, augment, seed)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image = self.transform(image=self.images[idx].numpy())["image"]
        return {"image": grey_to_input(image, self.mean, self.std), "target": self.distribution[idx], "index": idx}

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)

    def majority(self) -> np.ndarray:
        return self.distribution.argmax(dim=1).numpy()


class DistributionDataModule(CachedDataModule):
    def __init__(self, name: str, root: str, cache_dir: str, prepare: dict[str, Any], input_size: int = 64,
                 batch_size: int = 64, num_workers: int = 0, augment: dict[str, Any] | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0):
        super().__init__(name, root, cache_dir, prepare, batch_size, num_workers, mean, std, seed)
        self.input_size = input_size
        self.augment = dict(augment or {})
        self.classes: list[str] = []

    @property
    def num_classes(self) -> int:
        """From the cached data, not from code: another class set needs no change elsewhere."""
        return int(self.load_split("train")["distribution"].shape[1])

    def build_cache(self) -> CacheStatus:
        return prepare_ferplus(self.root, self.cache_dir, **self.prepare_cfg)

    def load_split(self, split: str) -> dict[str, Any]:
        tensors = super().load_split(split)
        self.classes = list(tensors["classes"])
        return tensors

    def dataset(self, split: str, train: bool | None = None) -> DistributionDataset:
        train = (split == "train") if train is None else train
        return DistributionDataset(self.load_split(split), self.input_size, train, self.augment, self.mean, self.std, self.seed)
