"""Splits shared by every data module: k folds of groups (subjects, photos, images) and seeded random splits.

Cross-validation selects one fold by a single option, `data.fold=k`: fold k is the test split, fold
(k + 1) mod n_folds the validation split (never k), the rest trains. A sweep over `data.fold=0,...,n-1` runs
every fold, and `evaluate.py folds=<sweep folder>` pools their test predictions (each sample tested once).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def fold_roles(fold: int | None, n_folds: int, test_fold: int | None = None, val_fold: int | None = None) -> tuple[int, int]:
    """(test fold, validation fold) of cross-validation fold `fold`: k and (k + 1) mod n_folds. Runs saved
    before `fold` existed name `test_fold` / `val_fold` themselves; those are honoured when given."""
    n_folds = int(n_folds)
    if n_folds < 2:
        raise ValueError(f"data.n_folds must be at least 2, got {n_folds}")
    if test_fold is not None:
        test = int(test_fold)
        val = int(val_fold) if val_fold is not None else (test + 1) % n_folds
    else:
        test = int(fold or 0)
        val = (test + 1) % n_folds
    for name, value in (("fold", test), ("validation fold", val)):
        if not 0 <= value < n_folds:
            raise ValueError(f"data.{name}={value} is outside 0..{n_folds - 1} (data.n_folds={n_folds})")
    if test == val:
        raise ValueError(f"the test fold and the validation fold are both {test}: they must differ")
    return test, val


def fold_masks(fold_of_item: Sequence[int] | np.ndarray, test: int, val: int) -> dict[str, np.ndarray]:
    """Boolean masks of the train / val / test items for the given test and validation folds."""
    folds = np.asarray(fold_of_item)
    return {"train": (folds != test) & (folds != val), "val": folds == val, "test": folds == test}


def group_folds(groups: Sequence[str], n_folds: int, labels: Sequence[str] | None = None, seed: int | None = None) -> dict[str, int]:
    """group -> fold. With `seed` None, groups are dealt round-robin in sorted order (subject folds: the same
    folds on every machine). With a seed, groups are shuffled with it first; with `labels` (a group's label is
    that of its first item), dealt per class in turn, so each fold holds every class in proportion
    (stratified folds). Every group lands in exactly one fold."""
    unique = sorted(set(groups))
    if n_folds < 2 or n_folds > len(unique):
        raise ValueError(f"data.n_folds={n_folds}: cross-validation needs 2 to {len(unique)} folds here (one per group at most: "
                         f"the data holds {len(unique)} subjects, photos or images to deal into folds)")
    if labels is None:
        strata = {"": unique}
    else:
        label_of: dict[str, str] = {}
        for group, label in zip(groups, labels):
            label_of.setdefault(group, label)
        strata = {}
        for group in unique:
            strata.setdefault(label_of[group], []).append(group)
    rng = np.random.default_rng(seed) if seed is not None else None
    out: dict[str, int] = {}
    position = 0  # carried across classes so small classes do not all start at fold 0
    for label in sorted(strata):
        members = list(strata[label])
        if rng is not None:
            rng.shuffle(members)
        for group in members:
            out[group] = position % n_folds
            position += 1
    return out


def random_split(groups: Sequence[str], val_fraction: float, test_fraction: float, seed: int,
                 labels: Sequence[str] | None = None) -> dict[str, str]:
    """group -> train / val / test: (per class, with `labels`) the groups shuffled with `seed`, the first
    round(n * test_fraction) to test, the next round(n * val_fraction) to val (at least one each when the
    class has 3 or more groups), the rest to train."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")
    label_of: dict[str, str] = {}
    for group, label in zip(groups, labels if labels is not None else [""] * len(groups)):
        label_of.setdefault(group, label)
    rng = np.random.default_rng(seed)
    out = {}
    for label in sorted(set(label_of.values())):
        members = sorted(g for g, lab in label_of.items() if lab == label)
        rng.shuffle(members)
        n = len(members)
        n_test = max(int(round(n * test_fraction)), 1 if n >= 3 and test_fraction > 0 else 0)
        n_val = max(int(round(n * val_fraction)), 1 if n >= 3 and val_fraction > 0 else 0)
        for k, group in enumerate(members):
            out[group] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out
