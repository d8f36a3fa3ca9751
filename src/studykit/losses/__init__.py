from studykit.losses.landmark import (
    CombinedLoss,
    DistancePreservationLoss,
    MSELoss,
    SymmetryLoss,
    WingLoss,
)

__all__ = ["CombinedLoss", "DistancePreservationLoss", "MSELoss", "SymmetryLoss", "WingLoss"]
