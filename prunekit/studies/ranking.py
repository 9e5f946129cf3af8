"""Rank statistics for the validity study: does a predictor order candidates like the measurement does?

Everything works on paired samples ``(x_i, y_i)``: ``x`` a predictor's value for candidate ``i``, ``y``
the measured test accuracy (or gap). Pairs with a non-finite member are dropped first. Kendall's τ is
τ-b (ties in either variable corrected), as :func:`scipy.stats.kendalltau`; Spearman's ρ is the
Pearson correlation of average ranks, as :func:`scipy.stats.spearmanr`. They are written here (short,
O(n²) for τ, fine for the tens of candidates of a study) so that the bootstrap and the permutation
test can call them thousands of times on one resampling index without scipy's per-call overhead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Stat = Callable[[np.ndarray, np.ndarray], float]

MIN_PAIRS = 5  # below this a rank correlation has too few pairs to mean anything


def finite_pairs(x: Sequence[float | None], y: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float arrays with every pair holding a None / NaN / inf removed."""
    if len(x) != len(y):
        raise ValueError(f"x and y must pair up, got {len(x)} and {len(y)} values")
    a = np.array([np.nan if v is None else float(v) for v in x], dtype=np.float64)
    b = np.array([np.nan if v is None else float(v) for v in y], dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def _batched(values: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(values) if scalar else values


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Kendall's τ-b along the last axis (a batch of samples at once for 2-D input); NaN when a variable is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    scalar = x.ndim == 1 and y.ndim == 1
    x, y = np.broadcast_arrays(np.atleast_2d(x), np.atleast_2d(y))
    iu = np.triu_indices(x.shape[-1], k=1)
    dx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
    dy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    s = np.sum(dx * dy, axis=1)
    denom = np.sqrt(np.sum(dx != 0, axis=1).astype(np.float64) * np.sum(dy != 0, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), np.nan)
    return _batched(tau[0], True) if scalar else tau


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis with ties given their average rank (scipy.stats.rankdata's default)."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(x, dtype=np.float64), axis=-1)


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Spearman's ρ along the last axis (batched for 2-D input); NaN when either variable is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    scalar = x.ndim == 1 and y.ndim == 1
    x, y = np.broadcast_arrays(np.atleast_2d(x), np.atleast_2d(y))
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(rx * rx, axis=1) * np.sum(ry * ry, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 0, np.sum(rx * ry, axis=1) / np.where(denom > 0, denom, 1.0), np.nan)
    return _batched(rho[0], True) if scalar else rho


def _in_chunks(fn: Callable[[slice], Any], total: int, chunk: int = 256) -> np.ndarray:
    """``fn`` on row slices of at most ``chunk`` resamples (bounds the n² pair arrays' memory)."""
    parts = [
        np.atleast_1d(np.asarray(fn(slice(i, i + chunk)), dtype=np.float64)) for i in range(0, total, chunk)
    ]
    return np.concatenate(parts)


def bootstrap_ci(
    x: np.ndarray, y: np.ndarray, stat: Stat, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over candidates resampled with replacement (pairs kept).

    ``stat`` is evaluated on all resamples at once (rows of a 2-D array), as kendall_tau / spearman_rho allow.
    """
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    values = _in_chunks(lambda rows: stat(x[idx[rows]], y[idx[rows]]), n_boot)
    values = values[np.isfinite(values)]  # a resample of one repeated candidate has no order
    if values.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def permutation_pvalue(x: np.ndarray, y: np.ndarray, stat: Stat, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of ``stat`` against shuffled pairings: (#{|s_perm| >= |s|} + 1) / (n_perm + 1)."""
    observed = float(stat(x, y))
    if not math.isfinite(observed):
        return float("nan")
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=np.float64)
    shuffled = np.stack([rng.permutation(y) for _ in range(n_perm)])
    xs = np.asarray(x, dtype=np.float64)[None, :]
    perm = _in_chunks(lambda rows: stat(xs, shuffled[rows]), n_perm)
    hits = int(np.sum(np.abs(perm) >= abs(observed) - 1e-12))
    return (hits + 1) / (n_perm + 1)


def top1_regret(pred: np.ndarray, measured: np.ndarray, direction: int = 1) -> float:
    """Measured accuracy lost by picking the predictor's favourite instead of the best candidate.

    ``direction`` +1: a larger predictor value is predicted better; -1: smaller is better. Ties among the
    favourites are averaged (no tie-break luck).
    """
    score = direction * np.asarray(pred, dtype=np.float64)
    favourites = np.flatnonzero(score == score.max())
    return float(np.max(measured) - np.mean(np.asarray(measured)[favourites]))


@dataclass
class RankResult:
    """How one predictor ranks one set of candidates against one measurement."""

    n: int
    tau: float | None
    tau_ci95: tuple[float, float] | None
    rho: float | None
    rho_ci95: tuple[float, float] | None
    p_value: float | None  # permutation test of τ
    regret: float | None  # top-1 regret (measurement units), predictor's stated direction
    aligned_tau: float | None  # direction · τ: positive means it ranks the way it claims to

    def to_dict(self) -> dict:
        return _clean(asdict(self))


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def rank_agreement(
    pred: Sequence[float | None],
    measured: Sequence[float | None],
    direction: int = 1,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> RankResult:
    """τ and ρ with bootstrap intervals, permutation p-value and top-1 regret; ``None`` fields when the
    predictor is constant or has fewer than :data:`MIN_PAIRS` finite values."""
    x, y = finite_pairs(pred, measured)
    if len(x) < MIN_PAIRS or np.all(x == x[0]) or np.all(y == y[0]):
        return RankResult(len(x), None, None, None, None, None, None, None)
    tau = kendall_tau(x, y)
    return RankResult(
        n=len(x),
        tau=tau,
        tau_ci95=bootstrap_ci(x, y, kendall_tau, n_boot, seed),
        rho=spearman_rho(x, y),
        rho_ci95=bootstrap_ci(x, y, spearman_rho, n_boot, seed + 1),
        p_value=permutation_pvalue(x, y, kendall_tau, n_perm, seed + 2),
        regret=top1_regret(x, y, direction),
        aligned_tau=direction * tau,
    )


def noise_ceiling(
    seed_a: Sequence[float], seed_b: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> dict:
    """τ between two fine-tuning seeds' measurements of the same candidates, with its bootstrap interval:
    no predictor can be expected to rank the candidates better than the measurement agrees with itself."""
    x, y = finite_pairs(seed_a, seed_b)
    if len(x) < MIN_PAIRS:
        return {"n": len(x), "tau": None, "tau_ci95": None}
    return _clean(
        {"n": len(x), "tau": kendall_tau(x, y), "tau_ci95": bootstrap_ci(x, y, kendall_tau, n_boot, seed)}
    )
