"""Share estimator work across data-parallel processes and combine the results.

Only the Monte-Carlo parts of the estimators are additive, so only they are split:

- Hutchinson probes (per-group NTK traces, Hessian traces): rank ``r`` of ``W`` draws its own
  ``shard_size(K, r, W)`` probes from the seed ``rank_seed(seed, r)``; the per-rank means and standard
  errors are merged exactly into the mean and standard error of all ``K`` probes (:func:`merge_mean_se`),
  so the result is a K-probe estimate, equal in distribution to the one-process estimate.
- The probe *samples* of the Jacobian pass (:mod:`prunekit.theory.jacobian_pass`: the NTK Gram, the exact
  diagonals, Gauss-Newton and Hessian products for the top eigenvalues) are split into contiguous shares
  (:func:`sample_range`) and the sums over samples are all-reduced.
- TwoNN is not additive over points and costs well under a second: every rank computes it on the same
  points, so all ranks hold the same number without communication.

With ``accelerator=None`` or one process every function here is the identity: no torch.distributed calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# Distinct, deterministic probe streams per rank (a large odd stride keeps rank seeds from colliding
# with the small consecutive seeds users pass).
_RANK_SEED_STRIDE = 1_000_003


def rank_and_world(accelerator: Any | None) -> tuple[int, int]:
    """``(process_index, num_processes)`` of an accelerate Accelerator; ``(0, 1)`` without one."""
    if accelerator is None:
        return 0, 1
    return int(accelerator.process_index), int(accelerator.num_processes)


def shard_size(total: int, rank: int, world: int) -> int:
    """How many of ``total`` items rank ``rank`` of ``world`` takes (sizes differ by at most one)."""
    if total < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid sharding total={total}, rank={rank}, world={world}")
    return total // world + (1 if rank < total % world else 0)


def sample_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous ``[lo, hi)`` slice of ``total`` samples that rank ``rank`` of ``world`` owns."""
    lo = sum(shard_size(total, r, world) for r in range(rank))
    return lo, lo + shard_size(total, rank, world)


def rank_seed(seed: int, rank: int) -> int:
    """The probe seed of ``rank``; rank 0 keeps ``seed`` so one process reproduces the usual numbers."""
    return int(seed) + _RANK_SEED_STRIDE * int(rank)


def merge_mean_se(parts: Sequence[tuple[float, float | None, int]]) -> tuple[float, float | None, int]:
    """Merge ``(mean, se, count)`` of disjoint probe sets into those of their union.

    ``se`` is the standard error of a mean of ``count`` i.i.d. probes (sample std with ddof=1 over
    sqrt(count)); a part with one probe carries no spread (its ``se`` may be None or NaN). The merged
    standard error uses the pooled within-part sums of squares plus the spread between part means,
    which is exactly the ddof=1 standard error of all probes together.
    """
    parts = [(float(m), s, int(k)) for m, s, k in parts if int(k) > 0]
    total = sum(k for _, _, k in parts)
    if total == 0:
        raise ValueError("no probes to merge: give at least one probe in total")
    mean = sum(m * k for m, _, k in parts) / total
    if total < 2:
        return mean, None, total
    ss = 0.0  # sum of squared deviations from the merged mean
    for m, s, k in parts:
        within = 0.0
        if k > 1 and s is not None and math.isfinite(float(s)):
            within = float(s) ** 2 * k * (k - 1)  # se² · k = var (ddof=1); var · (k-1) = sum of squares
        ss += within + k * (m - mean) ** 2
    return mean, math.sqrt(ss / (total - 1) / total), total


Stat = tuple[Any, Any, int]  # (mean, se, count); mean and se are floats or arrays of one shape


def reduce_mean_se(stats: Mapping[str, Stat], accelerator: Any | None) -> dict[str, Stat]:
    """Merge per-rank ``{key: (mean, se, count)}`` across processes (every rank gets the result).

    ``mean`` and ``se`` are floats or equally shaped arrays (e.g. per-unit traces); ``se`` may be None or
    NaN for a single probe. Every rank must pass the same keys and shapes. The sufficient statistics
    (count, sum, sum of squares) are summed with one float64 all-reduce, so the merge is exact (up to
    rounding) whatever the number of ranks; arrays come back as numpy arrays, floats as floats.
    """
    _, world = rank_and_world(accelerator)
    if world == 1:
        return dict(stats)
    keys = sorted(stats)
    means, ses, counts, shapes = [], [], [], []
    for k in keys:
        m, s, c = stats[k]
        m_arr = np.asarray(m, dtype=np.float64)
        s_arr = np.full(m_arr.shape, np.nan) if s is None else np.asarray(s, dtype=np.float64)
        shapes.append(m_arr.shape)
        means.append(m_arr.ravel())
        ses.append(np.broadcast_to(s_arr, m_arr.shape).ravel())
        counts.append(np.full(m_arr.size, float(c)))
    if not all_ranks_agree(float(sum(x.size for x in means)), accelerator, rel_tol=0.0):
        raise ValueError("ranks hold different sets of estimates: every process must use the same groups")
    mean, se, count = (torch.from_numpy(np.concatenate(x)) for x in (means, ses, counts))
    se = torch.nan_to_num(se, nan=0.0)
    # sum of squares of the probes: var·(k−1) + k·mean², with var = se²·k
    sumsq = se**2 * count * (count - 1).clamp_min(0) + count * mean**2
    packed = torch.stack([count, count * mean, sumsq]).to(accelerator.device)
    n, total, sq = accelerator.reduce(packed, reduction="sum").cpu().double().numpy()
    merged_mean = total / np.maximum(n, 1)
    var = np.clip(sq - n * merged_mean**2, 0.0, None) / np.maximum(n - 1, 1)
    merged_se = np.sqrt(var / np.maximum(n, 1))
    out: dict[str, Stat] = {}
    offset = 0
    for k, shape in zip(keys, shapes, strict=True):
        size = int(np.prod(shape)) if shape else 1
        sl = slice(offset, offset + size)
        offset += size
        c = int(round(n[offset - 1]))
        m_k = merged_mean[sl].reshape(shape)
        s_k = merged_se[sl].reshape(shape) if c >= 2 else None
        if shape == ():
            out[k] = (float(m_k), None if s_k is None else float(s_k), c)
        else:
            out[k] = (m_k, s_k, c)
    return out


def sum_across_ranks(t: torch.Tensor, accelerator: Any | None) -> torch.Tensor:
    """The element-wise sum of ``t`` over all processes (``t`` itself with one process)."""
    _, world = rank_and_world(accelerator)
    return t if world == 1 else accelerator.reduce(t, reduction="sum")


def gather_rows(rows: torch.Tensor, counts: Sequence[int], accelerator: Any) -> list[torch.Tensor]:
    """Every rank's ``rows`` (rank r holds ``counts[r]`` of them), padded to the largest share for the
    collective and cut back after it."""
    padded = rows.new_zeros(max(counts), *rows.shape[1:])
    padded[: rows.shape[0]] = rows
    parts = accelerator.gather(padded).reshape(len(counts), max(counts), *rows.shape[1:])
    return [part[:c] for part, c in zip(parts, counts, strict=True)]


def all_ranks_agree(value: float, accelerator: Any | None, rel_tol: float = 1e-6) -> bool:
    """Whether a number computed redundantly on every rank is the same everywhere (a cheap sanity check)."""
    _, world = rank_and_world(accelerator)
    if world == 1:
        return True
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    hi = float(accelerator.reduce(t, reduction="max").cpu()[0])
    lo = -float(accelerator.reduce(-t, reduction="max").cpu()[0])
    return abs(hi - lo) <= rel_tol * max(abs(hi), abs(lo), 1e-30)
