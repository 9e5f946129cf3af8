"""Turning per-unit scores into per-group keep counts that meet a size target exactly.

Both allocations search over keep counts with the exact :func:`remaining_size` (never the per-unit
estimates, which double-count the slices two groups share), and take the candidate closest to the
target among those within 1 % of it:

- :func:`uniform_counts`: one keep fraction for every group, found by bisection;
- :func:`global_counts`: one global ranking of units by (layer-normalised) score, removing the lowest
  first, each group floored at its minimum keep count so no layer collapses.

Within a group the kept units are always the highest-scored ones (:func:`keep_indices`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunekit.planner.target import TOLERANCE, LayerLimit, Target
from prunekit.structure.find import round_keep
from prunekit.structure.group import Group
from prunekit.structure.sizes import remaining_size

Counts = dict[str, int]


@dataclass
class SizeModel:
    """Exact (params, MACs) of the model after keeping some units per group, with a cache."""

    model: nn.Module
    groups: Sequence[Group]
    example_inputs: object
    _cache: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dense = remaining_size(self.model, self.groups, {}, self.example_inputs)

    def size(self, counts: Mapping[str, int]) -> tuple[int, int]:
        key = tuple(int(counts[g.name]) for g in self.groups)
        if key not in self._cache:
            self._cache[key] = remaining_size(self.model, self.groups, counts, self.example_inputs)
        return self._cache[key]

    def saved(self, counts: Mapping[str, int], metric: str) -> float:
        """Fraction of the dense model's ``metric`` removed by keeping ``counts``."""
        params, macs = self.size(counts)
        dense_params, dense_macs = self.dense
        if metric == "params":
            return 1.0 - params / dense_params
        return 1.0 - macs / dense_macs if dense_macs > 0 else 0.0

    def report(self, counts: Mapping[str, int]) -> dict[str, float | int | bool]:
        params, macs = self.size(counts)
        return {
            "params": int(params),
            "macs": int(macs),
            "dense_params": int(self.dense[0]),
            "dense_macs": int(self.dense[1]),
            "params_saved": self.saved(counts, "params"),
            "macs_saved": self.saved(counts, "macs"),
        }


def floor_counts(
    groups: Sequence[Group],
    min_keep_fraction: float,
    min_units: int,
    round_to: int,
    layers: Sequence[LayerLimit] = (),
) -> Counts:
    """The fewest units each group may keep: the largest of the group's own minimum, ``min_units``,
    ``ceil(min_keep_fraction * num_units)`` and the ``min_keep`` of every matching :class:`LayerLimit`,
    rounded up to a multiple of ``round_to`` (or all units)."""
    out: Counts = {}
    for g in groups:
        frac = max([min_keep_fraction] + [r.min_keep for r in layers if r.matches(g.layer, g.name)])
        lowest = max(g.min_units, min_units, math.ceil(frac * g.num_units - 1e-9))
        lowest = min(lowest, g.num_units)
        out[g.name] = round_keep(lowest, g.num_units, round_to, min_units=lowest)
    return out


def ceiling_counts(
    groups: Sequence[Group], layers: Sequence[LayerLimit], round_to: int, floors: Counts
) -> Counts:
    """The most units each group may keep: ``max_keep`` of every matching :class:`LayerLimit` (rounded
    down to a multiple of ``round_to``); ValueError when that is below the group's floor."""
    out: Counts = {}
    for g in groups:
        frac = min([1.0] + [r.max_keep for r in layers if r.matches(g.layer, g.name)])
        if frac >= 1.0:
            out[g.name] = g.num_units
            continue
        top = int(math.floor(frac * g.num_units + 1e-9)) // round_to * round_to
        if top < floors[g.name]:
            raise ValueError(
                f"group '{g.name}': max_keep {frac} allows {top} of {g.num_units} units, fewer than its "
                f"minimum {floors[g.name]}; raise max_keep or lower min_keep_fraction / round_to"
            )
        out[g.name] = top
    return out


def keep_indices(scores: Tensor, count: int) -> list[int]:
    """The ``count`` highest-scored units, sorted by index; ties go to the lower index (deterministic)."""
    values = scores.tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:count])


def _pick(candidates: Sequence[Counts], sizes: SizeModel, target: Target) -> Counts:
    """Among ``candidates``, the closest to the target of those that save at least target - 1 %."""
    ok = [c for c in candidates if sizes.saved(c, target.metric) >= target.saved - TOLERANCE]
    return min(ok, key=lambda c: abs(sizes.saved(c, target.metric) - target.saved))


def _infeasible(sizes: SizeModel, floors: Counts, target: Target) -> ValueError:
    best = sizes.saved(floors, target.metric)
    return ValueError(
        f"target {target.metric} saved={target.saved:.3f} cannot be reached: keeping every group at its "
        f"minimum saves only {best:.3f}; lower min_keep_fraction / min_units or the target"
    )


def uniform_counts(
    groups: Sequence[Group],
    sizes: SizeModel,
    target: Target,
    floors: Counts,
    round_to: int,
    iters: int = 60,
    ceilings: Counts | None = None,
) -> Counts:
    """The same keep fraction f in every group (rounded, floored, capped at ``ceilings``), f by bisection."""
    top = ceilings or {g.name: g.num_units for g in groups}

    def counts_at(f: float) -> Counts:
        return {
            g.name: min(
                top[g.name],
                round_keep(math.floor(f * g.num_units + 0.5), g.num_units, round_to, floors[g.name]),
            )
            for g in groups
        }

    full = counts_at(1.0)
    if sizes.saved(full, target.metric) >= target.saved:
        return full
    lo, hi = 0.0, 1.0  # invariant: saved(lo) >= target > saved(hi); saved falls as f grows
    if sizes.saved(counts_at(lo), target.metric) < target.saved - TOLERANCE:
        raise _infeasible(sizes, counts_at(lo), target)
    if sizes.saved(counts_at(lo), target.metric) < target.saved:
        return counts_at(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if sizes.saved(counts_at(mid), target.metric) >= target.saved:
            lo = mid
        else:
            hi = mid
    return _pick(_between(groups, counts_at(hi), counts_at(lo)), sizes, target)


def _between(groups: Sequence[Group], under: Counts, over: Counts) -> list[Counts]:
    """Counts from ``under`` (too big a model) to ``over`` (small enough), moving one group at a time.

    Adjacent uniform fractions can differ in several groups at once (groups of equal size change
    together); stepping through them group by group, largest unit first, keeps every group within one
    rounding step of the common fraction while resolving the target ~|groups| times more finely.
    """
    # groups of one shape (kind, units, unit size) step together: identical layers keep identical
    # widths, so a uniform prune of an HF model stays expressible in its config.json
    steps: dict[tuple, list[str]] = {}
    for g in sorted(groups, key=lambda g: -g.params_per_unit):
        if under[g.name] != over[g.name]:
            steps.setdefault((g.kind, g.num_units, g.params_per_unit), []).append(g.name)
    out, current = [dict(under)], dict(under)
    for names in steps.values():
        current = {**current, **{n: over[n] for n in names}}
        out.append(current)
    return out


def removal_order(groups: Sequence[Group], scores: Mapping[str, Tensor], floors: Counts) -> list[str]:
    """Group names of the removable units, lowest global score first (each group's units in ascending
    score order, at most ``num_units - floor`` of them). Ties: group order, then unit index."""
    entries: list[tuple[float, int, int, str]] = []
    for gi, g in enumerate(groups):
        values = scores[g.name].tolist()
        # ties within a group: the higher index goes first, matching keep_indices (keeps the lower)
        ascending = sorted(range(g.num_units), key=lambda i, v=values: (v[i], -i))
        for rank, unit in enumerate(ascending[: g.num_units - floors[g.name]]):
            entries.append((values[unit], gi, rank, g.name))
    entries.sort()
    return [name for *_, name in entries]


def global_counts(
    groups: Sequence[Group],
    sizes: SizeModel,
    target: Target,
    floors: Counts,
    round_to: int,
    scores: Mapping[str, Tensor],
    ceilings: Counts | None = None,
) -> Counts:
    """Remove the globally lowest-scored units, in order, until the target is met (bisection on how many);
    a group above its ceiling loses its lowest-scored units first."""
    order = removal_order(groups, scores, floors)
    top = ceilings or {g.name: g.num_units for g in groups}

    def counts_at(k: int) -> Counts:
        removed: dict[str, int] = {}
        for name in order[:k]:
            removed[name] = removed.get(name, 0) + 1
        return {
            g.name: min(
                top[g.name],
                round_keep(g.num_units - removed.get(g.name, 0), g.num_units, round_to, floors[g.name]),
            )
            for g in groups
        }

    if sizes.saved(counts_at(0), target.metric) >= target.saved:
        return counts_at(0)
    if sizes.saved(counts_at(len(order)), target.metric) < target.saved:
        if sizes.saved(counts_at(len(order)), target.metric) < target.saved - TOLERANCE:
            raise _infeasible(sizes, counts_at(len(order)), target)
        return counts_at(len(order))
    lo, hi = 0, len(order)  # invariant: saved(lo) < target <= saved(hi); saved grows with k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sizes.saved(counts_at(mid), target.metric) >= target.saved:
            hi = mid
        else:
            lo = mid
    return _pick([counts_at(lo), counts_at(hi)], sizes, target)


def layer_normalised(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Each group's scores divided by their mean, so that layers of different scale compare."""
    out = {}
    for name, s in scores.items():
        mean = s.double().mean()
        out[name] = s.double() / mean if mean > 0 else torch.zeros_like(s, dtype=torch.float64)
    return out
