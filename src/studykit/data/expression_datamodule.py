"""LightningDataModule for expression classification on the face pipeline's cached 4-channel tensors.

Ways to split (`split_by`):
- `subject` (JAFFE): subject-independent cross-validation. Subjects are dealt round-robin (in sorted order)
  into `n_folds` folds; `fold=k` tests fold k and validates on fold k+1 (mod n_folds), the rest trains. No
  subject is ever in two splits.
- `folds`: stratified cross-validation folds of photos (every face of a photo in one fold), seeded with
  `split_seed`; `fold=k` as above.
- `stratified`: one seeded random split per class (`val_fraction`, `test_fraction`).
- `folder` (FER+): the data set's own train / val / test folders, as listed in `prepare.splits`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from studykit.data.augment import build_augmentation
from studykit.data.base import IMAGENET_MEAN, IMAGENET_STD, CachedDataModule
from studykit.data.cache import CacheStatus
from studykit.data.ferplus import TARGETS, scheme_target
from studykit.data.folds import fold_masks, fold_roles, group_folds, random_split


def face_id(state: dict[str, Any], row: int) -> str:
    """The file name, with '#k' for the k-th face (k > 0) of a photo when every face is kept."""
    name = state["paths"][row].rsplit("/", 1)[-1]
    k = int(state["face_index"][row]) if "face_index" in state else 0
    return f"{name}#{k}" if k > 0 else name


SPLIT_BY = ("subject", "folder", "stratified", "folds")


def stratified_split(groups: Sequence[str], labels: Sequence[str], val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, str]:
    """group (photo) -> train / val / test, per class (`studykit.data.folds.random_split`)."""
    return random_split(groups, val_fraction, test_fraction, seed, labels)


def subject_folds(subjects: Sequence[str], n_folds: int) -> dict[str, int]:
    """subject -> fold, dealt round-robin in sorted order."""
    return group_folds(subjects, n_folds)


class FaceDataset(Dataset):
    """Face crops, 3-channel RGB or 4-channel RGB + landmark heat map: uint8 (N, C, S, S) tensors -> float
    (C, input, input), RGB normalized with the backbone's statistics, a landmark channel scaled to [0, 1];
    flips and small rotations move all channels together. The target is the class label, or with `votes`
    (N, classes) and `target` distribution / sample the FER+ paper's training target drawn from them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ids: list[str], input_size: int, train: bool,
                 augment: dict[str, Any], mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 votes: torch.Tensor | None = None, target: str = "majority"):
        if target != "majority" and votes is None:
            raise ValueError(f"training target {target!r} needs the annotators' votes; this data set has none")
        self.images, self.labels, self.image_id = images, labels, ids
        self.votes, self.target = votes, target
        self.rng = np.random.default_rng(seed)
        self.transform = build_augmentation(input_size, train, augment, seed)
        channels = images.shape[1]
        self.mean = torch.tensor(list(mean) + [0.0] * (channels - 3)).view(-1, 1, 1)
        self.std = torch.tensor(list(std) + [1.0] * (channels - 3)).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        image = self.transform(image=self.images[idx].permute(1, 2, 0).numpy())["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        target = self.labels[idx] if self.target == "majority" else scheme_target(self.votes[idx], self.target, self.rng)
        return {"image": (tensor - self.mean) / self.std, "target": target, "index": idx}

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)

    def sample_labels(self) -> np.ndarray:
        """The class of each item, for class-balanced sampling."""
        return self.labels.numpy()


class ExpressionDataModule(CachedDataModule):
    """`pipeline` is the face pipeline's config (conf/data/jaffe.yaml); `classes` the label names.
    `train_target` (FER+, whose source keeps the votes): `majority` trains on the class label, `distribution`
    on the vote distribution, `sample` on a class drawn from the votes at every access; validation and test
    always use the label."""

    def __init__(self, name: str, root: str, cache_dir: str, prepare: dict[str, Any], classes: Sequence[str] | None,
                 n_folds: int = 5, fold: int = 0, test_fold: int | None = None, val_fold: int | None = None, input_size: int = 224,
                 batch_size: int = 16,
                 num_workers: int = 0, augment: dict[str, Any] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, seed: int = 0, split_by: str = "subject",
                 val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int = 0, balanced_sampling: bool = False,
                 train_target: str = "majority", fit_splits: Sequence[str] = ("train",)):
        super().__init__(name, root, cache_dir, prepare, batch_size, num_workers, mean, std, seed, balanced_sampling,
                         fit_splits)
        if train_target not in TARGETS:
            raise ValueError(f"data.train_target must be one of {TARGETS}, got {train_target!r}")
        self.train_target = train_target
        self.classes = list(classes) if classes else []  # empty: the labels found, sorted (class folders)
        self.n_folds, self.fold = int(n_folds), int(fold)
        self.val_fraction, self.test_fraction, self.split_seed = float(val_fraction), float(test_fraction), int(split_seed)
        if split_by not in SPLIT_BY:
            raise ValueError(f"data.split_by must be one of {SPLIT_BY}, got {split_by!r}")
        self.split_by = split_by
        # cross-validation: fold k tests, fold k+1 validates (test_fold / val_fold: runs saved before `fold`)
        self.test_fold, self.val_fold = fold_roles(fold, n_folds, test_fold, val_fold) if split_by in ("subject", "folds") else (None, None)
        self.input_size = input_size
        self.augment = dict(augment or {})
        self.state: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return 4 if "four_channel" in self.prepare_cfg["pipeline"]["stages"] else 3

    def build_cache(self) -> CacheStatus:
        from studykit.data.face_sources import prepare_faces

        self.state, results = prepare_faces(self.root, self.cache_dir, self.prepare_cfg)
        if not self.classes:
            self.classes = sorted(set(self.state["labels"]) - {""})
        last = results[-1]
        return CacheStatus(last.folder, all(r.hit for r in results), "face pipeline")

    def load_split(self, split: str) -> dict[str, Any]:
        if split in self.splits:
            return self.splits[split]
        if self.state is None:
            self.prepare_data()
        st = self.state
        kept = st["kept"].tolist()
        images = st["four_channel"] if "four_channel" in st else st["face_images"]
        labels = [st["labels"][i] for i in kept]
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not in data.classes {self.classes}")
        subjects = [st["subjects"][i] for i in kept]
        # the votes stay in the source's rows (they key no cache); mtcnn_boxes with select=all makes a row per face
        source_row = st["source_row"][kept].tolist() if "source_row" in st else kept
        if self.train_target != "majority" and "votes" not in st:
            raise ValueError(f"{self.name}: data.train_target={self.train_target} needs the annotators' votes, which only "
                             f"data.prepare.labels_from=ferplus_majority provides (this data set: {self.prepare_cfg.get('labels_from')})")
        if self.split_by == "folder":
            tags = np.array([st["splits"][i] for i in kept])
            want = {name: tags == name for name in ("train", "val", "test")}
            empty = [name for name, mask in want.items() if not mask.any()]
            if empty:
                raise ValueError(f"{self.name}: no images in split(s) {empty}; data.prepare.splits must name train, val and test")
        elif self.split_by == "stratified":
            photos = [st["paths"][i] for i in kept]  # every face of a photo goes to one split
            split_of = stratified_split(photos, labels, self.val_fraction, self.test_fraction, self.split_seed)
            tags = np.array([split_of[p] for p in photos])
            want = {name: tags == name for name in ("train", "val", "test")}
        elif self.split_by == "folds":
            photos = [st["paths"][i] for i in kept]  # every face of a photo goes to one fold
            fold_of = group_folds(photos, self.n_folds, labels, self.split_seed)
            want = fold_masks([fold_of[p] for p in photos], self.test_fold, self.val_fold)
        else:
            fold_of = subject_folds(subjects, self.n_folds)
            want = fold_masks([fold_of[s] for s in subjects], self.test_fold, self.val_fold)
        self.check_splits_hold_faces(want, labels)
        for name, mask in want.items():
            idx = np.flatnonzero(mask)
            self.splits[name] = {
                "images": images[idx],
                "labels": torch.tensor([self.classes.index(labels[i]) for i in idx], dtype=torch.long),
                "image_id": [face_id(st, kept[i]) for i in idx],
                "subjects": sorted({subjects[i] for i in idx} - {""}),
                "votes": st["votes"][[source_row[i] for i in idx]] if "votes" in st else None,
            }
        if split not in self.splits:
            raise ValueError(f"{self.name}: no split {split!r} (data.fit_splits); face data sets give train, val and test")
        return self.splits[split]

    def check_splits_hold_faces(self, want: dict[str, np.ndarray], labels: list[str]) -> None:
        """Refuse, before any training, a split left empty (too few photos per class for a stratified split, a
        fraction of 0, a fold without subjects), naming the split and the classes short of photos."""
        empty = [name for name, mask in want.items() if not mask.any()]
        if not empty:
            return
        counts = {c: labels.count(c) for c in sorted(set(labels))}
        if self.split_by == "stratified":
            zero = [f"data.{name}_fraction={fraction}" for name, fraction in (("val", self.val_fraction), ("test", self.test_fraction))
                    if name in empty and fraction == 0]
            short = {c: n for c, n in counts.items() if n < 3}
            hint = ", ".join(zero) if zero else (
                f"a stratified split gives a class validation and test faces only from 3 photos on; classes with fewer: {short}")
        elif self.split_by in ("subject", "folds"):
            hint = f"test fold {self.test_fold} / validation fold {self.val_fold} of n_folds={self.n_folds} hold no {self.split_by.rstrip('s')}"
        else:
            hint = "data.prepare.splits must name train, val and test folders that hold faces"
        raise ValueError(f"{self.name}: split(s) {empty} hold no faces ({hint}); faces per class: {counts}. "
                         "Add photos or change the split options before training.")

    def dataset(self, split: str, train: bool | None = None) -> FaceDataset:
        train = (split == "train") if train is None else train
        data = self.load_split(split)
        return FaceDataset(data["images"], data["labels"], data["image_id"], self.input_size, train, self.augment,
                           self.mean, self.std, self.seed, data["votes"], self.train_target if train else "majority")
