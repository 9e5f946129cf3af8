"""The state every estimator runs its model in: eval mode and, where asked, eager HF attention.

Estimators must leave the model exactly as they found it, including modules whose mode differs from
their parent's (a frozen BatchNorm kept in eval inside a training model): ``model.train(was_training)``
would reset those, so each module's own flag is saved and restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module, eager_attention: bool = True) -> Iterator[nn.Module]:
    """Eval mode (dropout off, BatchNorm on running statistics) and, for HF models, eager attention.

    Both are restored on exit, module by module.
    """
    modes = [(m, m.training) for m in model.modules()]
    config = getattr(model, "config", None)
    old_attn = getattr(config, "_attn_implementation", None)
    switch = eager_attention and old_attn not in (None, "eager")
    model.eval()
    if switch:
        config._attn_implementation = "eager"
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        if switch:
            config._attn_implementation = old_attn
