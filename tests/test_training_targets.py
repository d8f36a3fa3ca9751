"""FER+ training schemes on real vote distributions (majority, distribution, probabilistic label drawing)
and class-balanced sampling."""

from collections import Counter

import numpy as np
import pytest
import torch

from studykit.builders import build_datamodule
from studykit.data.base import balanced_sampler
from studykit.data.distribution_datamodule import DistributionDataset
from tests.conftest import compose_cfg

TINY_FER = ["experiment=ferplus_distribution", "data.prepare.limit_per_split={train:96,val:32,test:32}", "data.input_size=48"]


@pytest.fixture(scope="module")
def fer_split(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fer")
    dm = build_datamodule(compose_cfg("train", TINY_FER, tmp / "run", tmp / "cache"))
    dm.prepare_data()
    return dm.load_split("train")


def test_majority_and_sampled_targets_follow_the_votes(fer_split):
    votes = fer_split["distribution"]
    majority = DistributionDataset(fer_split, 48, True, {}, target="majority")
    mixed = int(next(i for i in range(len(votes)) if (votes[i] > 0).sum() >= 2))  # a face the annotators disagreed on
    t = majority[mixed]["target"]
    assert t.sum() == 1 and int(t.argmax()) == int(votes[mixed].argmax())
    sample = DistributionDataset(fer_split, 48, True, {}, target="sample", seed=0)
    draws = Counter(int(sample.training_target(mixed).argmax()) for _ in range(3000))
    freq = np.array([draws[k] / 3000 for k in range(votes.shape[1])])
    assert np.abs(freq - votes[mixed].numpy()).max() < 0.04  # drawn as often as voted
    assert torch.equal(DistributionDataset(fer_split, 48, True, {})[mixed]["target"], votes[mixed])
    # evaluation always sees the annotators' distribution
    assert torch.equal(DistributionDataset(fer_split, 48, False, {}, target="sample")[mixed]["target"], votes[mixed])
    with pytest.raises(ValueError, match="'soft'"):
        DistributionDataset(fer_split, 48, True, {}, target="soft")


def test_balanced_sampler_equalizes_classes():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    sampler = balanced_sampler(labels, seed=0)
    drawn = Counter(labels[i] for _ in range(20) for i in sampler)
    assert len(list(sampler)) == 100
    shares = np.array([drawn[k] for k in range(3)]) / sum(drawn.values())
    assert np.abs(shares - 1 / 3).max() < 0.05
    assert list(balanced_sampler(labels, seed=1)) == list(balanced_sampler(labels, seed=1))


def test_balanced_sampling_in_the_datamodule(tmp_path):
    dm = build_datamodule(compose_cfg("train", [*TINY_FER, "data.balanced_sampling=true", "data.train_target=sample"],
                                      tmp_path / "run", tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.sampler.__class__.__name__ == "WeightedRandomSampler" and dm.train_set.target == "sample"
    batch = next(iter(loader))
    assert torch.all(batch["target"].sum(1) == 1)  # sampled one-hot labels
