from studykit.losses.landmark import (
    CombinedLoss,
    CrossEntropyLoss,
    DistancePreservationLoss,
    KLDivergenceLoss,
    L1Loss,
    MSELoss,
    SymmetryLoss,
    WingLoss,
)

__all__ = ["CombinedLoss", "CrossEntropyLoss", "DistancePreservationLoss", "KLDivergenceLoss", "L1Loss", "MSELoss", "SymmetryLoss", "WingLoss"]
