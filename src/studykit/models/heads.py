"""Heads that turn backbone features into outputs."""

from __future__ import annotations

from typing import Sequence

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
OUTPUTS = {"sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=-1), "none": nn.Identity}


class MLPHead(nn.Sequential):
    """[Dropout, Linear, act] per hidden layer, then Dropout, Linear, output activation.

    The default reproduces the seed project's landmark head: Dropout 0.5, Linear 512, ReLU, Dropout 0.25,
    Linear 256, ReLU, Dropout 0.125, Linear out, Sigmoid.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (512, 256),
        dropout: Sequence[float] = (0.5, 0.25, 0.125),
        activation: str = "relu",
        output: str = "sigmoid",
    ):
        if len(dropout) != len(hidden) + 1:
            raise ValueError(f"head needs one dropout per linear layer: {len(hidden) + 1}, got {len(dropout)}")
        if activation not in ACTIVATIONS or output not in OUTPUTS:
            raise ValueError(f"activation in {sorted(ACTIVATIONS)}, output in {sorted(OUTPUTS)}")
        layers: list[nn.Module] = []
        width = in_features
        for p, size in zip(dropout, hidden):
            layers += [nn.Dropout(p), nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        layers += [nn.Dropout(dropout[-1]), nn.Linear(width, out_features), OUTPUTS[output]()]
        super().__init__(*layers)
