import numpy as np
import pytest
import torch

from studykit.builders import build_datamodule
from studykit.data.landmark_datamodule import LandmarkDataset, flip_permutation

PAIRS = [(3, 4), (5, 6), (7, 8), (12, 13), (14, 15)]


def test_flip_permutation_swaps_pairs_only():
    perm = flip_permutation(15, PAIRS)
    assert perm[2] == 3 and perm[3] == 2 and perm[13] == 14 and perm[0] == 0 and perm[8] == 8
    assert (perm[perm] == np.arange(15)).all()


def synthetic(size=40):
    image = np.zeros((1, size, size), dtype=np.uint8)
    image[0, 5, 10] = 255  # a bright pixel at landmark 3's position
    pts = np.tile(np.array([[20.0, 20.0]], dtype=np.float32), (15, 1))
    pts[2] = [10, 5]   # landmark 3 (left)
    pts[3] = [30, 6]   # landmark 4 (right)
    return {"images": torch.from_numpy(image), "landmarks": torch.from_numpy(pts)[None],
            "orig_size": torch.tensor([[size, size]], dtype=torch.float32), "category": torch.tensor([0]), "image_id": ["x"]}


def test_horizontal_flip_moves_pixels_and_swaps_labels():
    data = synthetic()
    ds = LandmarkDataset(data, input_size=40, train=True, augment={"hflip_p": 1.0}, flip_pairs=PAIRS,
                         mean=(0, 0, 0), std=(1, 1, 1))
    item = ds[0]
    # albumentations flips x to (W - 1) - x; landmark 3 must still be the left-lung point, i.e. the
    # mirror of the original right point 4, and vice versa
    assert item["target"][2].tolist() == pytest.approx([(39 - 30) / 40, 6 / 40])
    assert item["target"][3].tolist() == pytest.approx([(39 - 10) / 40, 5 / 40])
    assert item["image"][0, 5, 39 - 10].item() == pytest.approx(1.0)
    assert item["image"].shape == (3, 40, 40)


def test_no_augmentation_in_eval_and_resize_normalizes_targets():
    data = synthetic()
    ds = LandmarkDataset(data, input_size=20, train=False, augment={"hflip_p": 1.0, "rotate_limit": 15}, flip_pairs=PAIRS)
    item = ds[0]
    assert item["image"].shape == (3, 20, 20)
    assert item["target"][2].tolist() == pytest.approx([10 / 40, 5 / 40])  # resize keeps normalized coordinates


def test_rotation_keeps_every_landmark(make_cfg):
    cfg = make_cfg(["data.augment.rotate_p=1.0", "data.augment.hflip_p=0.0"])
    dm = build_datamodule(cfg)
    dm.setup("fit")
    for i in range(4):
        item = dm.train_set[i]
        assert item["target"].shape == (15, 2) and torch.isfinite(item["target"]).all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["target"].shape == (4, 15, 2)
    assert dm.num_landmarks == 15 and dm.categories == ["COVID", "Normal", "Viral_Pneumonia"]
    # validation items are deterministic; targets of an unrotated image match the cache exactly
    val = dm.dataset("val")
    np.testing.assert_allclose(val[0]["target"].numpy() * 64, val.landmarks[0].numpy(), atol=1e-3)


def test_one_augmentation_builder_reads_the_same_keys_everywhere():
    from studykit.data.augment import build_augmentation

    full = {"hflip_p": 0.5, "rotate_limit": 10, "rotate_p": 0.5, "scale": [0.9, 1.1], "brightness": 0.2, "contrast": 0.2}
    names = [type(t).__name__ for t in build_augmentation(32, True, full, seed=0)]
    assert names == ["HorizontalFlip", "Affine", "RandomBrightnessContrast", "Resize"]
    # landmark data sets flip in the dataset (pairs swapped), and carry keypoints through the rest
    landmark = build_augmentation(32, True, full, seed=0, keypoints=True, flip=False)
    assert [type(t).__name__ for t in landmark] == ["Affine", "RandomBrightnessContrast", "Resize"]
    assert [type(t).__name__ for t in build_augmentation(32, False, full)] == ["Resize"]  # evaluation: resize only
    with pytest.raises(ValueError, match=r"unknown data.augment keys \['rotation'\]"):
        build_augmentation(32, True, {"rotation": 10})


def test_translation_moves_image_and_landmarks_together():
    from studykit.data.augment import build_augmentation

    image = np.zeros((64, 64, 3), np.uint8)
    image[29:32, 19:22] = 255  # a bright 3x3 block centred on the landmark (20, 30)
    shifts = []
    for seed in range(6):
        warp = build_augmentation(64, True, {"translate": 0.2, "rotate_p": 1.0}, seed=seed, keypoints=True)
        assert [type(t).__name__ for t in warp] == ["Affine", "Resize"]  # the shift alone builds the affine step
        out = warp(image=image, keypoints=np.array([[20.0, 30.0]]))
        x, y = out["keypoints"][0]
        rows, cols = np.nonzero(out["image"][..., 0] > 127)
        assert (cols.mean(), rows.mean()) == pytest.approx((x, y), abs=0.5)  # the landmark stays on its block
        assert abs(x - 20) <= 0.2 * 64 + 1 and abs(y - 30) <= 0.2 * 64 + 1
        shifts.append((round(x - 20), round(y - 30)))
    assert len(set(shifts)) > 1  # the shift is drawn anew
    with pytest.raises(ValueError, match=r"data.augment.translate .* \[0, 1\), got -0.1"):
        build_augmentation(64, True, {"translate": -0.1})
