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
from studykit.data.landmark_folder import prepare_landmark_folder


def flip_permutation(num_landmarks: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Index map that swaps each 1-based left/right pair; applying it twice is the identity."""
    perm = np.arange(num_landmarks)
    for left, right in pairs:
        perm[left - 1], perm[right - 1] = right - 1, left - 1
    return perm


def point_names(num_landmarks: int, names: Sequence[str] | None) -> list[str]:
    """The points' names: as configured, else L1..LK."""
    if not names:
        return [f"L{i}" for i in range(1, num_landmarks + 1)]
    names = [str(n) for n in names]
    if len(names) != num_landmarks or len(set(names)) != len(names):
        raise ValueError(f"data.landmark_names must name each of the {num_landmarks} points once, got {len(names)} names "
                         f"({len(set(names))} distinct)")
    return names


def point_number(point: int | str, names: Sequence[str], where: str) -> int:
    """A point given by its 1-based number or its name -> its 1-based number."""
    if isinstance(point, str) and not point.isdigit():
        if point not in names:
            raise ValueError(f"{where}: no point named {point!r}; the names are {list(names)}")
        return list(names).index(point) + 1
    number = int(point)
    if not 1 <= number <= len(names):
        raise ValueError(f"{where}: point {number} is outside 1..{len(names)}")
    return number


def resolve_pairs(pairs: Sequence[Sequence[int | str]], names: Sequence[str], where: str) -> list[tuple[int, int]]:
    out = []
    for pair in pairs or []:
        if len(pair) != 2:
            raise ValueError(f"{where}: each pair names two points, got {list(pair)}")
        out.append((point_number(pair[0], names, where), point_number(pair[1], names, where)))
    return out


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
        # top-left corner of a cropped sample in the photo (landmark_folder's crop), so predictions are photo pixels
        self.offset = tensors.get("offset", torch.zeros_like(self.orig_size))
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
            "offset": self.offset[idx],
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
        landmark_names: Sequence[str] | None = None,
        error: dict[str, Any] | None = None,
        split_by: str = "given",
        fold: int = 0,
        n_folds: int = 5,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
    ):
        super().__init__(name, root, cache_dir, prepare, batch_size, num_workers, mean, std, seed, fit_splits=fit_splits,
                         split_by=split_by, fold=fold, n_folds=n_folds, val_fraction=val_fraction, test_fraction=test_fraction,
                         split_seed=split_seed)
        self.landmark_names = point_names(self.num_landmarks, landmark_names)
        self.flip_pairs = resolve_pairs(flip_pairs, self.landmark_names, "data.flip_pairs")
        # errors in pixels of the original, and with `normalize: [a, b]` also divided by the distance of points a and b
        # (NME, e.g. the outer eye corners), failures counted above `failure_threshold`
        error = dict(error or {})
        self.nme_pair = tuple(resolve_pairs([error["normalize"]], self.landmark_names, "data.error.normalize")[0]) \
            if error.get("normalize") else None
        self.failure_threshold = float(error.get("failure_threshold", 0.08))
        if int(tta_shift_px) < 0 or int(tta_shift_px) >= input_size // 2:
            raise ValueError(f"data.tta_shift_px={tta_shift_px}: a shift in input pixels, 0 <= shift < input_size / 2")
        self.tta_shift_px = int(tta_shift_px)
        self.input_size = input_size
        self.augment = dict(augment or {})
        self.categories: list[str] = list(self.prepare_cfg.get("categories") or [])

    @property
    def num_landmarks(self) -> int:
        return int(self.prepare_cfg.get("num_landmarks", 15))

    def build_cache(self) -> CacheStatus:
        if "format" in self.prepare_cfg:  # a folder data set (conf/data/landmark_folder.yaml)
            return prepare_landmark_folder(self.root, self.cache_dir, **self.prepare_cfg)
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
