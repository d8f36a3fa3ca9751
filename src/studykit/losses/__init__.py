from studykit.losses.landmark import (
    CombinedLoss,
    DistancePreservationLoss,
    KLDivergenceLoss,
    L1Loss,
    MSELoss,
    SymmetryLoss,
    WingLoss,
)

__all__ = ["CombinedLoss", "DistancePreservationLoss", "KLDivergenceLoss", "L1Loss", "MSELoss", "SymmetryLoss", "WingLoss"]
