"""LightningDataModule for landmark regression that reads only the cached tensors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from studykit.data.cache import read_manifest
from studykit.data.cxr_landmarks import prepare_cxr_landmarks
from studykit.utils.io import safe_torch_load

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def flip_permutation(num_landmarks: int, pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Index map that swaps each 1-based left/right pair; applying it twice is the identity."""
    perm = np.arange(num_landmarks)
    for left, right in pairs:
        perm[left - 1], perm[right - 1] = right - 1, left - 1
    return perm


def build_transforms(input_size: int, train: bool, augment: dict[str, Any]) -> A.Compose:
    steps: list[A.BasicTransform] = []
    if train:
        if augment.get("rotate_limit", 0):
            limit = float(augment["rotate_limit"])
            steps.append(A.Affine(rotate=(-limit, limit), border_mode=0, fill=0, p=augment.get("rotate_p", 0.5)))
        if augment.get("brightness", 0) or augment.get("contrast", 0):
            steps.append(
                A.RandomBrightnessContrast(
                    brightness_limit=augment.get("brightness", 0.0),
                    contrast_limit=augment.get("contrast", 0.0),
                    p=augment.get("brightness_contrast_p", 0.5),
                )
            )
    steps.append(A.Resize(input_size, input_size))
    # remove_invisible=False: a rotated point near the border must keep its slot in the (K, 2) target
    return A.Compose(steps, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


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
        self.transform = build_transforms(input_size, train, augment)
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
        image = torch.from_numpy(np.ascontiguousarray(out["image"])).float().div_(255.0)
        image = image.unsqueeze(0).expand(3, -1, -1)  # grey X-ray -> the 3 channels of ImageNet backbones
        image = (image - self.mean) / self.std
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


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


class LandmarkDataModule(L.LightningDataModule):
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
    ):
        super().__init__()
        self.name = name
        self.root = root
        self.cache_dir = cache_dir
        self.prepare_cfg = dict(prepare)
        self.flip_pairs = [tuple(p) for p in flip_pairs]
        self.input_size = input_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = dict(augment or {})
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.cache_folder: Path | None = None
        self.splits: dict[str, dict[str, Any]] = {}
        self.categories: list[str] = list(self.prepare_cfg.get("categories", []))

    @property
    def num_landmarks(self) -> int:
        return int(self.prepare_cfg.get("num_landmarks", 15))

    def prepare_data(self) -> None:
        status = prepare_cxr_landmarks(self.root, self.cache_dir, **self.prepare_cfg)
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
            tensors = safe_torch_load(self.cache_folder / f"{split}.pt")
            if tensors["images"].shape[0] == 0:
                raise RuntimeError(f"split {split!r} in {self.cache_folder} holds no images; see report.json there")
            self.splits[split] = tensors
            self.categories = list(tensors.get("categories", self.categories))
        return self.splits[split]

    def dataset(self, split: str, train: bool | None = None) -> LandmarkDataset:
        train = (split == "train") if train is None else train
        return LandmarkDataset(
            self.load_split(split), self.input_size, train, self.augment, self.flip_pairs, self.mean, self.std, self.seed
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_set = self.dataset("train")
            self.val_set = self.dataset("val")
        if stage in (None, "validate"):
            self.val_set = self.dataset("val")
        if stage in (None, "test", "predict"):
            self.test_set = self.dataset("test")

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
