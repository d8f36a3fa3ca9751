"""Losses by kind: landmark geometry, classification, label distributions, and the shared ones. Each class
lists the tasks it serves in `tasks` (CombinedLoss: those of its terms)."""

from studykit.losses.classification import CrossEntropyLoss
from studykit.losses.common import CombinedLoss, L1Loss, MSELoss
from studykit.losses.distribution import KLDivergenceLoss
from studykit.losses.landmark import DistancePreservationLoss, SymmetryLoss, WingLoss

__all__ = ["CombinedLoss", "CrossEntropyLoss", "DistancePreservationLoss", "KLDivergenceLoss", "L1Loss", "MSELoss", "SymmetryLoss", "WingLoss"]
