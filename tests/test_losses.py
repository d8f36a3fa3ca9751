import math

import numpy as np
import pytest
import torch

from studykit.losses import CombinedLoss, DistancePreservationLoss, MSELoss, SymmetryLoss, WingLoss
from studykit.losses.landmark import mediastinal_axis, reflect


def test_mse_matches_hand_value():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 0.0], [3.0, 6.0]]])
    # squared errors 1, 4, 0, 4 -> mean 2.25
    assert MSELoss()(pred, target).item() == pytest.approx(2.25)
    assert MSELoss(scale=2.0)(pred, target).item() == pytest.approx(2.25 / 4)


def test_wing_loss_both_regimes():
    loss = WingLoss(w=10, epsilon=2)
    c = 10 - 10 * math.log(1 + 10 / 2)
    pred = torch.tensor([[[1.0, 0.0], [0.0, 14.0]]])
    target = torch.zeros(1, 2, 2)
    # |x| = 1, 0, 0, 14: 10 ln(1.5), 0, 0, 14 - C
    expected = (10 * math.log(1.5) + 0 + 0 + (14 - c)) / 4
    assert loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # continuous at |x| = w
    at_w = loss(torch.tensor([[[10.0, 0.0]]]), torch.zeros(1, 1, 2)).item() * 2
    assert at_w == pytest.approx(10 * math.log(6), rel=1e-6)
    with pytest.raises(ValueError):
        WingLoss(w=0)


def chest(asym: float = 0.0) -> torch.Tensor:
    """15 points with a vertical axis x=100 through 1, 9, 10, 11, 2; pairs mirrored, right x shifted by asym."""
    pts = torch.zeros(15, 2)
    axis = {1: 10.0, 9: 40.0, 10: 70.0, 11: 100.0, 2: 130.0}
    for k, y in axis.items():
        pts[k - 1] = torch.tensor([100.0, y])
    for i, (left, right) in enumerate([(3, 4), (5, 6), (7, 8), (12, 13), (14, 15)]):
        dx, y = 20.0 + 10 * i, 20.0 + 20 * i
        pts[left - 1] = torch.tensor([100.0 - dx, y])
        pts[right - 1] = torch.tensor([100.0 + dx + asym, y])
    return pts[None]


def test_axis_fit_and_reflection():
    centre, direction = mediastinal_axis(chest(), torch.tensor([0, 8, 9, 10, 1]))
    assert centre[0].tolist() == pytest.approx([100.0, 70.0])
    assert abs(direction[0, 0].item()) == pytest.approx(0.0, abs=1e-6)
    mirrored = reflect(torch.tensor([[[90.0, 5.0]]]), centre, direction)
    assert mirrored[0, 0].tolist() == pytest.approx([110.0, 5.0], abs=1e-5)


def test_symmetry_loss_hand_values():
    loss = SymmetryLoss()
    assert loss(chest(), chest()).item() == pytest.approx(0.0, abs=1e-5)
    # every right point 3 px further out: each mirrored left misses its partner by 3 px
    assert loss(chest(3.0), chest()).item() == pytest.approx(3.0, abs=1e-4)
    # relative to a target that is equally asymmetric, nothing is left to penalise
    assert SymmetryLoss(relative_to_target=True)(chest(3.0), chest(3.0)).item() == pytest.approx(0.0, abs=1e-4)
    # the axis fit is rotation-invariant: rotate the chest by 30 degrees
    a = math.radians(30)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    assert loss(chest(3.0) @ rot.T, chest()).item() == pytest.approx(3.0, abs=1e-3)


def test_distance_loss_hand_value():
    target = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]])
    pred = torch.tensor([[[0.0, 0.0], [6.0, 8.0], [0.0, 0.0], [6.0, 8.0]]])
    loss = DistancePreservationLoss(pairs=[(1, 2), (3, 4)])
    # |10 - 5| and |10 - 10| -> mean 2.5; a pure translation changes nothing
    assert loss(pred, target).item() == pytest.approx(2.5)
    assert loss(target + 7.0, target).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        DistancePreservationLoss(pairs=[(0, 1)])


def test_combined_loss_weights_and_components():
    wing, sym, dist = WingLoss(), SymmetryLoss(), DistancePreservationLoss()
    combo = CombinedLoss({"wing": {"loss": wing, "weight": 1.0}, "symmetry": {"loss": sym, "weight": 0.3},
                          "distance": {"loss": dist, "weight": 0.2}})
    torch.manual_seed(0)
    pred, target = chest(2.0) + torch.randn(1, 15, 2), chest()
    expected = wing(pred, target) + 0.3 * sym(pred, target) + 0.2 * dist(pred, target)
    assert combo(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(combo.last_components) == {"wing", "symmetry", "distance"}


@pytest.mark.parametrize("loss", [MSELoss(), WingLoss(), SymmetryLoss(), DistancePreservationLoss()])
def test_losses_have_finite_gradients(loss):
    pred = (chest(1.0) + torch.randn(1, 15, 2)).repeat(4, 1, 1).requires_grad_(True)
    loss(pred, chest().repeat(4, 1, 1)).backward()
    assert torch.isfinite(pred.grad).all() and np.abs(pred.grad.numpy()).sum() > 0
