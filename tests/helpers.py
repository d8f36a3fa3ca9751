"""Loss stand-ins that fail on purpose, referenced from Hydra overrides in the fault tests."""

import torch
from torch import nn


class OutOfMemoryLoss(nn.Module):
    """Raises the error a GPU that runs out of memory raises, on the first batch."""

    def __init__(self, **kwargs):
        super().__init__()

    def forward(self, pred, target):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


class NaNAfterLoss(nn.Module):
    """Mean absolute error for `good_steps` training batches, then NaN."""

    def __init__(self, good_steps: int = 2, **kwargs):
        super().__init__()
        self.good_steps = good_steps
        self.calls = 0

    def forward(self, pred, target):
        loss = (pred - target).abs().mean()
        if self.training:
            self.calls += 1
            if self.calls > self.good_steps:
                return loss * float("nan")
        return loss
