"""LightningDataModule for landmark regression that reads only the cached tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from studykit.data.augment import build_augmentation
from studykit.data.base import IMAGENET_MEAN, IMAGENET_STD, CachedDataModule, grey_to_input
from studykit.data.cache import CacheStatus
from studykit.data.cxr_landmarks import prepare_cxr_landmarks


def flip_permutation(num_landmarks: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Index map that swaps each 1-based left/right pair; applying it twice is the identity."""
    perm = np.arange(num_landmarks)
    for left, right in pairs:
        perm[left - 1], perm[right - 1] = right - 1, left - 1
    return perm


class LandmarkDataset(Dataset):
    """Items: image (3, S, S) normalized float, target (K, 2) in [0, 1] of the input, plus metadata."""

    def __init__(
        self,
        tensors: dict[str, Any],
        input_size: int,
        train: bool,
        augment: dict[str, Any],
        flip_pairs: Sequence[Sequence[int]],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ):
        self.images = tensors["images"]
        self.landmarks = tensors["landmarks"]
        self.orig_size = tensors["orig_size"]
        self.category = tensors["category"]
        self.image_id = tensors["image_id"]
        self.input_size = input_size
        self.train = train
        self.hflip_p = float(augment.get("hflip_p", 0.0)) if train else 0.0
        self.flip = A.Compose([A.HorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
        self.perm = flip_permutation(self.landmarks.shape[1], flip_pairs)
        self.transform = build_augmentation(input_size, train, augment, keypoints=True, flip=False)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.reseed(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image = self.images[idx].numpy()
        points = self.landmarks[idx].numpy()
        if self.hflip_p and self.rng.random() < self.hflip_p:
            out = self.flip(image=image, keypoints=points)
            # the image's left lung is now on the right: swap pair labels so landmark k keeps its meaning
            image, points = out["image"], np.asarray(out["keypoints"], dtype=np.float32)[self.perm]
        out = self.transform(image=image, keypoints=points)
        image = grey_to_input(out["image"], self.mean, self.std)
        target = torch.as_tensor(np.asarray(out["keypoints"], dtype=np.float32)[:, :2]) / self.input_size
        return {
            "image": image,
            "target": target,
            "orig_size": self.orig_size[idx],
            "category": self.category[idx],
            "index": idx,
        }

    def reseed(self, seed: int) -> None:
        """Seed the flip decision and albumentations' own generators (they do not follow torch/numpy)."""
        self.rng = np.random.default_rng(seed)
        self.flip.set_random_seed(seed)
        self.transform.set_random_seed(seed)


class LandmarkDataModule(CachedDataModule):
    def __init__(
        self,
        name: str,
        root: str,
        cache_dir: str,
        prepare: dict[str, Any],
        flip_pairs: Sequence[Sequence[int]],
        input_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        fit_splits: Sequence[str] = ("train",),
        tta_shift_px: int = 0,
    ):
        super().__init__(name, root, cache_dir, prepare, batch_size, num_workers, mean, std, seed, fit_splits=fit_splits)
        self.flip_pairs = [tuple(p) for p in flip_pairs]
        if int(tta_shift_px) < 0 or int(tta_shift_px) >= input_size // 2:
            raise ValueError(f"data.tta_shift_px={tta_shift_px}: a shift in input pixels, 0 <= shift < input_size / 2")
        self.tta_shift_px = int(tta_shift_px)
        self.input_size = input_size
        self.augment = dict(augment or {})
        self.categories: list[str] = list(self.prepare_cfg.get("categories", []))

    @property
    def num_landmarks(self) -> int:
        return int(self.prepare_cfg.get("num_landmarks", 15))

    def build_cache(self) -> CacheStatus:
        return prepare_cxr_landmarks(self.root, self.cache_dir, **self.prepare_cfg)

    def load_split(self, split: str) -> dict[str, Any]:
        tensors = super().load_split(split)
        self.categories = list(tensors.get("categories", self.categories))
        return tensors

    def dataset(self, split: str, train: bool | None = None) -> LandmarkDataset:
        train = (split == "train") if train is None else train
        return LandmarkDataset(
            self.load_split(split), self.input_size, train, self.augment, self.flip_pairs, self.mean, self.std, self.seed
        )
