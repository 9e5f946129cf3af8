"""One pass over the logits' Jacobian on the probe set, shared out by samples across processes.

:func:`jacobian_pass` builds the NTK Gram and, from the same Jacobian blocks, the per-entry NTK and
Gauss-Newton diagonals (:class:`prunekit.theory.jacobian_stats.JacobianStats`); :func:`top_eigenvalues`
then takes the top Gauss-Newton eigenvalue by Lanczos on the kept Jacobian and the top Hessian eigenvalue
by Lanczos started from the Gauss-Newton eigenvector.

Under data parallelism (an accelerate Accelerator with W processes) rank r takes a contiguous share of
the probe samples. The Jacobian rows — the costly part — are computed once, by their owner. The diagonals
are sums over samples (one all-reduce). The Gram needs every pair of samples: each rank gathers the others'
rows, fills its own rows of the kernel, and one all-reduce assembles it. Gauss-Newton products and
Hessian-vector products are sums over samples too, so every Lanczos step is one all-reduce and all ranks
follow the same iteration. Where the Jacobian does not fit ``jacobian_elements`` it is not kept; then
every rank builds the whole Gram itself (the one-process algorithm) and the Hessian products are still
split by samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunekit.batch import Batch, batch_size_of, logits_of, move_to, slice_inputs
from prunekit.theory.distributed import (
    gather_rows,
    rank_and_world,
    sample_range,
    shard_size,
    sum_across_ranks,
)
from prunekit.theory.eigen import flat, top_eigenvalue_of, unflat
from prunekit.theory.jacobian_stats import JacobianStats
from prunekit.theory.modes import eval_mode

# the Gram's block products run in float32 (accumulated in float64): the PSD check must allow that rounding
GRAM_PSD_RTOL = 1e-5


def _shard(probe: Batch, lo: int, hi: int) -> Batch:
    x, y = probe
    return slice_inputs(x, slice(lo, hi)), y[lo:hi]


def _micro(batch: Batch, size: int) -> list[Batch]:
    n = batch_size_of(batch[0])
    return [_shard(batch, a, min(a + size, n)) for a in range(0, n, size)]


def jacobian_pass(
    model: nn.Module, probe: Batch, jacobian_elements: int, accelerator: Any | None = None
) -> tuple[Tensor, JacobianStats, dict[str, Any]]:
    """The n×n traced NTK Gram (float64), the Jacobian statistics (diagonals over all samples; the kept
    Jacobian rows are this rank's) and ``{"samples_shared": whether the samples were shared out,
    "logits": the probe set's logits (all samples, on every rank)}``."""
    from prunekit.structure.units import trainable_parameters
    from prunekit.theory.ntk import ntk_gram

    rank, world = rank_and_world(accelerator)
    n = batch_size_of(probe[0])
    params = trainable_parameters(model)
    device = next(iter(params.values())).device
    with eval_mode(model, eager_attention=False), torch.no_grad():
        logits = torch.cat([logits_of(model, move_to(x, device)) for x, _ in _micro(probe, 256)])
    if logits.dim() != 2:
        raise ValueError(
            f"the estimates need class logits shaped (batch, classes); the model gives {tuple(logits.shape)}: "
            "give it a classification head (e.g. AutoModelForSequenceClassification)"
        )
    k = logits.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1)
    size = sum(p.numel() for p in params.values())
    keep = n * k * size <= jacobian_elements
    kwargs = {"block_elements": jacobian_elements, "matmul_dtype": torch.float32}
    if world == 1 or not keep or n < world:  # else every rank owns samples and the Jacobian can be gathered
        stats = JacobianStats(params, probs, jacobian_elements if world == 1 else 0)
        gram = ntk_gram(model, probe, on_rows=stats, **kwargs)
        return gram, stats, {"samples_shared": False, "logits": logits}
    lo, hi = sample_range(n, rank, world)
    stats = JacobianStats(params, probs[lo:hi], jacobian_elements, total_samples=n)
    own = ntk_gram(model, _shard(probe, lo, hi), on_rows=stats, **kwargs)
    stats.consolidate()  # this rank's Jacobian rows as one (samples·k × P) matrix
    gram = torch.zeros(n, n, dtype=torch.float64)
    gram[lo:hi, lo:hi] = own
    counts = [shard_size(n, r, world) for r in range(world)]
    mine = stats.jacobian().to(device)
    for r, theirs in enumerate(gather_rows(mine, [c * k for c in counts], accelerator)):
        if r != rank and theirs.numel():
            r_lo = sample_range(n, r, world)[0]
            block = mine.reshape(hi - lo, -1) @ theirs.reshape(counts[r], -1).T  # Σ over logits and entries
            gram[lo:hi, r_lo : r_lo + counts[r]] = block.double().cpu()
    gram = sum_across_ranks(gram.to(device), accelerator).cpu()
    stats.ntk = sum_across_ranks(stats.ntk.to(device), accelerator).cpu()
    stats.gn = sum_across_ranks(stats.gn.to(device), accelerator).cpu()
    return gram, stats, {"samples_shared": True, "logits": logits}


def top_eigenvalues(
    model: nn.Module,
    probe: Batch,
    stats: JacobianStats,
    iters: int,
    seed: int,
    accelerator: Any | None = None,
    micro_batch: int = 128,
    mask: Tensor | None = None,
) -> dict[str, Any]:
    """Top eigenvalue of G (Lanczos on the kept Jacobian) and of H (Lanczos from G's eigenvector, at most
    ``iters`` Hessian-vector products), each product summed over the ranks' sample shares.

    ``mask`` (flat, boolean over the trainable parameters): the eigenvalues of the matrices restricted to
    those entries (P H P), e.g. a masked model's remaining parameters."""
    from prunekit.theory.hessian import hvp

    rank, world = rank_and_world(accelerator)
    n = batch_size_of(probe[0])
    lo, hi = sample_range(n, rank, world)
    mine = _shard(probe, lo, hi)
    batches = _micro(mine, micro_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device

    keep = None if mask is None else mask.to(device=device, dtype=params[0].dtype)

    def hessian_mv(v: Tensor) -> Tensor:
        if not batches:
            return sum_across_ranks(torch.zeros_like(v), accelerator)
        if keep is not None:
            v = v * keep
        hv = flat(hvp(model, batches, unflat(v, params))) * ((hi - lo) / n)  # this rank's share of the mean
        return sum_across_ranks(hv if keep is None else hv * keep, accelerator)

    start, gn = None, None
    if stats.has_jacobian:
        gn = top_eigenvalue_of(
            lambda v: sum_across_ranks(stats.gn_matvec(v).to(device), accelerator),
            stats.size,
            iters=max(iters, 30),
            tol=1e-3,
            seed=seed,
            method="lanczos",
            device=device,
            return_vector=True,
        )
        start = gn.pop("vector")
    top = top_eigenvalue_of(
        hessian_mv,
        stats.size,
        iters,
        1e-3,
        seed,
        "lanczos",
        device=device,
        dtype=params[0].dtype,
        start=start,
    )
    top["start"] = "gauss_newton_eigenvector" if start is not None else "random"
    if gn is not None:
        top["gauss_newton"] = gn
    return top
