"""Evaluating a model with some units masked at fixed weights: the probe set, BatchNorm re-estimation,
and the probe training loss. Shared by every curve planner (:mod:`prunekit.planner.theory`,
:mod:`prunekit.planner.validated`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.batch import logits_of, move_to
from prunekit.planner.registry import PlanContext
from prunekit.structure.masking import mask_groups

Removed = dict[str, list[int]]


def probe(ctx: PlanContext, samples: int) -> list[tuple[Any, torch.Tensor]]:
    """The first batches of ``ctx.batches`` holding at least ``samples`` labels."""
    if not ctx.batches:
        raise ValueError("planner needs data: pass batches=[(inputs, labels), ...] to make_plan")
    out, seen = [], 0
    for inputs, labels in ctx.batches:
        out.append((inputs, labels))
        seen += len(labels)
        if seen >= samples:
            break
    return out


def probe_tensors(ctx: PlanContext, samples: int) -> tuple[Tensor, Tensor]:
    """The probe batches as one (inputs, labels) pair, at most ``samples`` rows, on the model's device."""
    batches = probe(ctx, samples)
    if not all(isinstance(x, Tensor) for x, _ in batches):
        raise ValueError("this predictor needs tensor model inputs; the planner's batches hold other inputs")
    device = next(ctx.model.parameters()).device
    x = torch.cat([x for x, _ in batches])[:samples].to(device)
    y = torch.cat([y for _, y in batches])[:samples].to(device)
    return x, y


@contextmanager
def adapted_bn(model: nn.Module, batches: Sequence[Any], enabled: bool) -> Iterator[None]:
    """BatchNorm running statistics re-estimated on ``batches`` (cumulative average) for the block; the
    original statistics, momenta and modes are restored after. Weights are not touched."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not enabled or not bns or not batches:
        yield
        return
    modes = {m: m.training for m in model.modules()}
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False)}, m.momentum) for m in bns]
    device = next(model.parameters()).device
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative: every probe batch counts alike
            m.train()
        with torch.no_grad():
            for inputs, _ in batches:
                logits_of(model, move_to(inputs, device))
        for m in bns:
            m.eval()
        yield
    finally:
        with torch.no_grad():
            for m, buffers, momentum in saved:
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
                m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def masked(ctx: PlanContext, removed: Removed, samples: int, adapt: bool) -> Iterator[nn.Module]:
    """The model in eval mode with ``removed`` zeroed (and BatchNorm re-estimated when ``adapt``)."""
    batches = probe(ctx, samples)
    was = ctx.model.training
    ctx.model.eval()
    try:
        with mask_groups(ctx.model, ctx.groups, removed), adapted_bn(ctx.model, batches, adapt):
            yield ctx.model
    finally:
        ctx.model.train(was)


def loss_fn(ctx: PlanContext, samples: int, adapt: bool) -> Callable[[Removed], float]:
    """removed units -> the masked model's mean cross-entropy on the probe batches."""
    batches = probe(ctx, samples)
    device = next(ctx.model.parameters()).device

    def evaluate(removed: Removed) -> float:
        total, count = 0.0, 0
        with masked(ctx, removed, samples, adapt) as model:
            for inputs, labels in batches:
                with torch.no_grad():
                    logits = logits_of(model, move_to(inputs, device))
                total += float(F.cross_entropy(logits, labels.to(device), reduction="sum"))
                count += len(labels)
        return total / count

    return evaluate
