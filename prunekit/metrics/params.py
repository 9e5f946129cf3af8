"""Parameter counts."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries (shared parameters counted once); ``trainable_only``: requires_grad only."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
