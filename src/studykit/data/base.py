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
from studykit.data.folds import SPLITS, fold_masks, fold_roles, group_folds, random_split

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


def subset(tensors: dict[str, Any], idx: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """The items `idx` of a split's tensors: per-item tensors and lists are indexed, the rest (class names) kept."""
    idx = np.asarray(idx, dtype=np.int64)
    n = items_in(tensors)
    out = {}
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
            out[key] = value[torch.from_numpy(idx)]
        elif isinstance(value, list) and len(value) == n and key not in ("categories", "classes"):
            out[key] = [value[i] for i in idx]
        else:
            out[key] = value
    return out


def concat(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several splits' tensors as one (the inverse of `subset`): per-item values joined, the rest from the first."""
    sizes = [items_in(p) for p in parts]
    out = {}
    for key, value in parts[0].items():
        if isinstance(value, torch.Tensor) and value.ndim and all(p[key].shape[0] == n for p, n in zip(parts, sizes)):
            out[key] = torch.cat([p[key] for p in parts])
        elif isinstance(value, list) and key not in ("categories", "classes") and all(len(p[key]) == n for p, n in zip(parts, sizes)):
            out[key] = [v for p in parts for v in p[key]]
        else:
            out[key] = value
    return out


def items_in(tensors: dict[str, Any]) -> int:
    return int(tensors["images"].shape[0])


SPLIT_BY = ("given", "random", "folds")


def cut_splits(tensors: dict[str, Any], split_by: str, fold: int, n_folds: int, val_fraction: float, test_fraction: float,
               split_seed: int, where: str, extra: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """train / val / test from a cache's `all.pt`: the splits its annotation files or lists gave (`given`; with no
    validation given, `val_fraction` of the training groups, drawn with `split_seed`), a
    seeded random split (`random`), or cross-validation fold `fold` of `n_folds` seeded folds (`folds`); every
    sample of one group (an image file) in one split. `extra` (given only): further split names the data may carry,
    extra training data named in `data.fit_splits` (e.g. [train, afw]); validation is never carved from them, so
    adding one leaves train / val / test as they were."""
    groups = list(tensors["group"])
    if split_by == "given":
        tags = np.asarray(tensors["split"])
        unknown = sorted(set(tags.tolist()) - set(SPLITS) - set(extra))
        if unknown:
            raise ValueError(f"{where}: samples carry splits {unknown}; split_by=given needs every sample in train, val or "
                             "test (annotation files or lists per split) or in an extra split named in data.fit_splits, "
                             "or use split_by=random or folds")
        if not (tags == "val").any() and val_fraction > 0:  # no validation given: a seeded fraction of the training groups
            train_groups = [g for g, t in zip(groups, tags) if t == "train"]
            carved = random_split(train_groups, val_fraction, 0.0, split_seed)
            tags = np.asarray(["val" if t == "train" and carved[g] == "val" else t for g, t in zip(groups, tags)])
        masks = {name: tags == name for name in (*SPLITS, *extra)}
    elif split_by == "random":
        split_of = random_split(groups, val_fraction, test_fraction, split_seed)
        tags = np.asarray([split_of[g] for g in groups])
        masks = {name: tags == name for name in SPLITS}
    elif split_by == "folds":
        test, val = fold_roles(fold, n_folds)
        fold_of = group_folds(groups, n_folds, seed=split_seed)
        masks = fold_masks([fold_of[g] for g in groups], test, val)
    else:
        raise ValueError(f"data.split_by must be one of {SPLIT_BY}, got {split_by!r}")
    return {name: subset(tensors, np.flatnonzero(mask)) for name, mask in masks.items()}


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


class CachedDataModule(L.LightningDataModule):
    """Subclasses implement `build_cache()` (returns the CacheStatus of their preparation function) and
    `dataset(split, train)`; splits are loaded from `<cache folder>/<split>.pt` with weights_only=True, or cut
    from `<cache folder>/all.pt` by `split_by` (given, random, folds with `fold` k of `n_folds`; `cut_splits`).

    fit_splits: the splits trained on, [train] by default. [train, val] refits a recipe chosen on validation
    on both splits (more images, no held-out split left: the trainer then skips validation, see
    `fits_on_val`); the test split is refused."""

    def __init__(self, name: str, root: str, cache_dir: str, prepare: dict[str, Any], batch_size: int, num_workers: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, seed: int = 0,
                 balanced_sampling: bool = False, fit_splits: Sequence[str] = ("train",), split_by: str = "given",
                 fold: int = 0, n_folds: int = 5, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0):
        super().__init__()
        if split_by not in SPLIT_BY:
            raise ValueError(f"data.split_by must be one of {SPLIT_BY}, got {split_by!r}")
        self.split_by, self.fold, self.n_folds = split_by, int(fold), int(n_folds)
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), int(split_seed)
        if split_by == "folds":
            fold_roles(fold, n_folds)  # a bad fold is refused before any preparation
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

    @property
    def extra_splits(self) -> tuple[str, ...]:
        """Training splits besides train / val (data.fit_splits: [train, afw]): extra data the files or lists give."""
        return tuple(s for s in self.fit_splits if s not in SPLITS)

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
            if (self.cache_folder / "all.pt").is_file():  # one file of every sample, cut here (folds, random splits)
                cut = cut_splits(load_cached(self.cache_folder, "all.pt"), self.split_by, self.fold, self.n_folds, self.val_fraction,
                                 self.test_fraction, self.split_seed, f"{self.name} ({self.cache_folder})", self.extra_splits)
                for name, part in cut.items():
                    self.splits.setdefault(name, part)
            elif (self.cache_folder / f"{split}.pt").is_file():
                self.splits[split] = load_cached(self.cache_folder, f"{split}.pt")
        if split in self.extra_splits and not (split in self.splits and items_in(self.splits[split])):
            raise ValueError(f"{self.name}: no split {split!r} in {self.cache_folder}: an extra training split in "
                             "data.fit_splits needs data whose folders, files or lists give it, with split_by=given")
        if split not in self.splits:
            raise FileNotFoundError(f"{self.name}: no split {split!r} in {self.cache_folder}")
        if items_in(self.splits[split]) == 0:
            raise RuntimeError(f"split {split!r} in {self.cache_folder} holds no images; see report.json there")
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
