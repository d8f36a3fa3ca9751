"""One augmentation builder for every data module: the same `augment` keys, read the same way.

    hflip_p                 probability of a horizontal flip (landmark data sets flip in the dataset instead,
                            where left/right pairs are swapped: pass flip=False)
    rotate_limit, rotate_p  rotation by up to +-rotate_limit degrees, with probability rotate_p (default 0.5)
    scale                   [lo, hi] zoom drawn with the rotation (null: none)
    translate               shift by up to +-translate of the image size along x and y, drawn with the rotation
                            (0: none)
    brightness, contrast    limits of a random brightness/contrast change, with probability brightness_contrast_p
                            (default 0.5)
Then a resize to the input size. Training only: evaluation gets the resize alone.
"""

from __future__ import annotations

from typing import Any

import albumentations as A

KEYS = {"hflip_p", "rotate_limit", "rotate_p", "scale", "translate", "brightness", "contrast", "brightness_contrast_p"}


def build_augmentation(input_size: int, train: bool, augment: dict[str, Any], seed: int | None = None,
                       keypoints: bool = False, flip: bool = True) -> A.Compose:
    unknown = sorted(set(augment) - KEYS)
    if unknown:
        raise ValueError(f"unknown data.augment keys {unknown}; known: {sorted(KEYS)}")
    steps: list[A.BasicTransform] = []
    if train:
        if flip and augment.get("hflip_p", 0):
            steps.append(A.HorizontalFlip(p=float(augment["hflip_p"])))
        limit = float(augment.get("rotate_limit") or 0)
        zoom = augment.get("scale")
        shift = float(augment.get("translate") or 0)
        if not 0 <= shift < 1:
            raise ValueError(f"data.augment.translate is a fraction of the image size in [0, 1), got {shift}")
        if limit or zoom or shift:
            # one affine warp (probability rotate_p) draws rotation, zoom and shift together
            geometry: dict[str, Any] = {"rotate": (-limit, limit)}
            if zoom:
                geometry["scale"] = tuple(float(v) for v in zoom)
            if shift:
                geometry["translate_percent"] = {"x": (-shift, shift), "y": (-shift, shift)}
            steps.append(A.Affine(**geometry, border_mode=0, fill=0, p=float(augment.get("rotate_p", 0.5))))
        if augment.get("brightness", 0) or augment.get("contrast", 0):
            steps.append(A.RandomBrightnessContrast(brightness_limit=float(augment.get("brightness", 0.0)),
                                                    contrast_limit=float(augment.get("contrast", 0.0)),
                                                    p=float(augment.get("brightness_contrast_p", 0.5))))
    steps.append(A.Resize(input_size, input_size))
    # remove_invisible=False: a rotated point near the border must keep its slot in the (K, 2) target
    extra = {"keypoint_params": A.KeypointParams(format="xy", remove_invisible=False)} if keypoints else {}
    return A.Compose(steps, seed=seed, **extra)
