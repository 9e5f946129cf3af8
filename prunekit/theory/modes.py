"""The state every estimator runs its model in: eval mode and, where asked, eager HF attention.

Estimators must leave the model exactly as they found it, including modules whose mode differs from
their parent's (a frozen BatchNorm kept in eval inside a training model): ``model.train(was_training)``
would reset those, so each module's own flag is saved and restored. :func:`grad_scope` adds what the
gradient-based estimators and importance scores need on top: autograd on (callers may hold no_grad),
gradients for the chosen parameters, and the math attention kernel for second derivatives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


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


@contextmanager
def grad_scope(
    model: nn.Module, params: Iterable[torch.Tensor] = (), double_backward: bool = False
) -> Iterator[nn.Module]:
    """:func:`eval_mode` (attention implementation unchanged), autograd enabled and ``requires_grad`` on
    ``params``; all restored on exit. ``double_backward``: use the math scaled-dot-product attention kernel,
    because the fused ones (flash, memory-efficient) have no double backward (Hessian-vector products)."""
    flags = [(p, p.requires_grad) for p in params]
    with ExitStack() as stack:
        stack.enter_context(eval_mode(model, eager_attention=False))
        stack.enter_context(torch.enable_grad())
        if double_backward:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        try:
            for p, _ in flags:
                p.requires_grad_(True)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
