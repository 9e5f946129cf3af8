"""The Hutchinson estimate of the Hessian's diagonal, entry by entry (the planner's Hessian scores use it).

For a Rademacher probe z, E[z ⊙ H z] = diag H. Batch b's mean cross-entropy has Hessian H_b; each batch
draws its own ``num_probes`` probes (one generator seeded once, drawn in order), so the sum returned,
Σ_b n_b · mean_probes(z ⊙ H_b z), divided by N = Σ_b n_b is an unbiased estimate of the diagonal of the
Hessian of the mean loss over all the batches' samples. The model runs in :func:`grad_scope` (eval mode,
autograd on, math attention for the double backward). Traces of the whole Hessian and its blocks, with
standard errors, are :func:`prunekit.theory.hessian.hessian_trace`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from prunekit.batch import Batch, batch_size_of, logits_of, move_to
from prunekit.theory.modes import grad_scope


def hutchinson_diagonal(
    model: nn.Module, batches: Iterable[Batch], tensors: Sequence[Tensor], num_probes: int, seed: int = 0
) -> tuple[list[Tensor], int]:
    """``(sums, N)``: per tensor of ``tensors`` (parameters of ``model``), Σ_b n_b · mean over
    ``num_probes`` probes of z ⊙ H_b z in float64, and the number of samples N; ``sums[i] / N`` is the
    diagonal of the mean loss's Hessian. A tensor the loss does not reach twice gets zeros."""
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if not tensors:
        raise ValueError("no tensors given: pass the parameters whose Hessian diagonal is wanted")
    gen = torch.Generator().manual_seed(seed)
    device = tensors[0].device
    acc = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    seen = 0
    show = sys.stderr.isatty()
    with grad_scope(model, tensors, double_backward=True):
        for inputs, labels in tqdm(batches, desc="hutchinson diagonal", leave=False, disable=not show):
            inputs, labels = move_to(inputs, device), labels.to(device)
            n = batch_size_of(inputs)
            loss = F.cross_entropy(logits_of(model, inputs), labels)
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            used = [
                (t, g, a)
                for t, g, a in zip(tensors, grads, acc, strict=True)
                if g is not None and g.requires_grad
            ]
            for _ in range(num_probes):
                zs = [
                    (torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(device, t.dtype)
                    for t, _, _ in used
                ]
                hvs = torch.autograd.grad(
                    [g for _, g, _ in used],
                    [t for t, _, _ in used],
                    grad_outputs=zs,
                    retain_graph=True,
                    allow_unused=True,
                )
                for (_, _, a), z, hv in zip(used, zs, hvs, strict=True):
                    if hv is not None:
                        a.add_((z * hv).double(), alpha=n / num_probes)
            seen += n
    return acc, seen
