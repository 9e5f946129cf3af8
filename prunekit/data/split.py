"""Seeded, stratified index selection: carving validation / test splits and subsampling.

Stratified so that small splits keep the class balance (a 10 % validation split of MNIST-1D has
40 ± 0 examples per class, not 40 ± 6). Optional ``groups`` keep identical rows (e.g. the same retweet)
on one side of a split, so a test example never also sits in train.
"""

from __future__ import annotations

import numpy as np

# Fixed stream ids: each step draws from its own stream, so changing one setting (say max_train_samples)
# never reshuffles another split.
STREAM_TEST, STREAM_VALIDATION, STREAM_TRAIN_SUBSET, STREAM_VALIDATION_SUBSET, STREAM_TEST_SUBSET = (
    1,
    2,
    3,
    4,
    5,
)


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, step); any int seed works, negatives included."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, stream])


def _quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes in proportion to ``counts`` (largest remainder, exact total)."""
    exact = counts * (n / counts.sum())
    take = np.minimum(np.floor(exact).astype(np.int64), counts)
    order = np.argsort(-(exact - take), kind="stable")
    for c in order:
        if take.sum() >= n:
            break
        if take[c] < counts[c]:
            take[c] += 1
    return take


def stratified_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` sorted row indices drawn without replacement, class proportions as in ``labels``."""
    labels = np.asarray(labels)
    n = min(int(n), len(labels))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    take = _quotas(counts, n)
    picks = [rng.permutation(np.flatnonzero(inverse == c))[: take[c]] for c in range(len(classes))]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def split_off(
    labels: np.ndarray, fraction: float, rng: np.random.Generator, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into ``(kept, taken)`` index arrays with ``taken`` ≈ ``fraction`` of the rows.

    With ``groups``, rows sharing a group value are kept together (the group's label is that of its
    first row), so the sizes are exact in groups and approximate in rows.
    """
    labels = np.asarray(labels)
    if fraction <= 0.0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, dtype=np.int64)
    if groups is None:
        taken = stratified_pick(labels, round(fraction * len(labels)), rng)
    else:
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        picked_groups = stratified_pick(labels[first], round(fraction * len(first)), rng)
        taken = np.flatnonzero(np.isin(inverse.reshape(-1), picked_groups)).astype(np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[taken] = False
    return np.flatnonzero(mask).astype(np.int64), taken
