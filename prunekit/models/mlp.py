"""A multilayer perceptron on flattened inputs (any input shape)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x.flatten(1)))


def mlp(num_classes: int, input_shape: tuple, hidden: Sequence[int] = (256, 128)) -> nn.Module:
    """``hidden``: widths of the hidden layers (an empty list gives a linear classifier)."""
    hidden = list(hidden) if isinstance(hidden, (list, tuple)) else hidden
    if not isinstance(hidden, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise ValueError(
            f"model.kwargs.hidden must be a list of positive integers, e.g. [256, 128]; got {hidden!r}"
        )
    return MLP(math.prod(input_shape), hidden, num_classes)
