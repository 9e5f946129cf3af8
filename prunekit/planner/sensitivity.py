"""Widths first: per-group sensitivity curves of one whole-model quantity, and the allocation they drive.

A curve holds, for one group and several keep counts, the model's quantity (a predicted gap, a
predicted risk, the training loss) with *only that group's* lowest-scored units masked at fixed weights
(Level 2). :func:`allocate_by_curves` then removes units greedily where the quantity rises least per
parameter (or MAC) removed, treating the groups' increases as additive, until the target is met; the
last move is refined unit by unit so that the target is met exactly. Curves are interpolated linearly
between their keep counts.

Why greedy over the lower hull rather than one unit at a time: curves measured at fixed weights are
rarely convex (a group can be nearly free to thin to 50 % and then collapse); comparing every jump to a
lower keep count by its *average* cost per unit of size sees past a locally steep first step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from prunekit.planner.allocate import Counts, SizeModel, _infeasible
from prunekit.planner.target import TOLERANCE, Target
from prunekit.structure.find import round_keep
from prunekit.structure.group import Group

Removed = dict[str, list[int]]
LANDING = 0.002  # a plan lands within this of the target where the units allow
Evaluate = Callable[[Removed], float]  # the whole model's quantity with these units masked


@dataclass(frozen=True)
class Curve:
    """The quantity at ``counts`` kept units of one group (descending; ``counts[0]`` is all units)."""

    group: str
    counts: tuple[int, ...]
    values: tuple[float, ...]

    def at(self, count: float) -> float:
        """Linear interpolation between measured counts (constant beyond the smallest)."""
        cs, vs = self.counts, self.values
        if count >= cs[0]:
            return vs[0]
        for i in range(1, len(cs)):
            if cs[i] <= count <= cs[i - 1]:
                t = (count - cs[i]) / (cs[i - 1] - cs[i])
                return vs[i] + t * (vs[i - 1] - vs[i])
        return vs[-1]

    def to_dict(self) -> dict[str, list]:
        return {"counts": list(self.counts), "values": list(self.values)}


def grid_counts(group: Group, fractions: Sequence[float], floor: int, round_to: int) -> list[int]:
    """All units, then each fraction's keep count (rounded, floored), descending and distinct."""
    out = [group.num_units]
    for f in sorted(fractions, reverse=True):
        c = round_keep(math.floor(f * group.num_units + 0.5), group.num_units, round_to, floor)
        if c < out[-1]:
            out.append(c)
    if floor < out[-1]:
        out.append(floor)
    return out


def ascending_units(scores: Tensor) -> list[int]:
    """Units from least to most important; ties: the higher index goes first (keep_indices keeps the lower)."""
    values = scores.tolist()
    return sorted(range(len(values)), key=lambda i: (values[i], -i))


def sensitivity_curves(
    groups: Sequence[Group],
    scores: Mapping[str, Tensor],
    evaluate: Evaluate,
    fractions: Sequence[float],
    floors: Mapping[str, int],
    round_to: int = 1,
) -> tuple[float, dict[str, Curve]]:
    """The unmasked quantity and one :class:`Curve` per group (lowest-scored units masked first)."""
    base = float(evaluate({}))
    curves = {}
    for g in groups:
        order = ascending_units(scores[g.name])
        counts = grid_counts(g, fractions, floors[g.name], round_to)
        values = [base] + [float(evaluate({g.name: order[: g.num_units - c]})) for c in counts[1:]]
        curves[g.name] = Curve(g.name, tuple(counts), tuple(values))
    return base, curves


def _metric(sizes: SizeModel, counts: Mapping[str, int], metric: str) -> float:
    params, macs = sizes.size(counts)
    return float(params if metric == "params" else macs)


def _land(
    groups: Sequence[Group],
    sizes: SizeModel,
    target: Target,
    current: Counts,
    curves: Mapping[str, Curve],
    floors: Mapping[str, int],
    round_to: int,
) -> Counts:
    """The last move: from ``current`` (short of the target), thin one group by as many units as it takes.

    Every group is tried, not only the one the greedy step chose, so that coarse groups (a few heads) can
    be landed by a finer one: the cheapest within 0.2 % of the target, else the closest.
    """
    candidates: list[tuple[bool, float, float, Counts]] = []
    for g in groups:
        seen = current[g.name]
        for c in range(current[g.name] - 1, floors[g.name] - 1, -1):
            rc = round_keep(c, g.num_units, round_to, floors[g.name])
            if rc >= seen:
                continue
            seen = rc
            moved = {**current, g.name: rc}
            saved = sizes.saved(moved, target.metric)
            if saved >= target.saved - TOLERANCE:
                off = abs(saved - target.saved)
                cost = curves[g.name].at(rc) - curves[g.name].at(current[g.name])
                # the cheapest on the curves among those within 0.2 % of the target (every method of
                # a benchmark lands about as near it), else the closest
                candidates.append((off > LANDING, cost if off <= LANDING else off, off, moved))
            if saved >= target.saved:
                break  # thinner than this only moves further past the target
    if not candidates:
        return current
    best = min(candidates, key=lambda t: t[:3])
    if best[2] <= TOLERANCE:
        return best[3]
    # one coarse step overshoots by more than 1 %: give one rounding step back to another group
    chosen, off = best[3], best[2]
    for g in groups:
        back = {**best[3], g.name: min(g.num_units, best[3][g.name] + round_to)}
        if back[g.name] > current[g.name]:
            continue
        saved = sizes.saved(back, target.metric)
        if saved >= target.saved - TOLERANCE and abs(saved - target.saved) < off:
            chosen, off = back, abs(saved - target.saved)
    return chosen


def allocate_by_curves(
    groups: Sequence[Group],
    sizes: SizeModel,
    target: Target,
    curves: Mapping[str, Curve],
    floors: Mapping[str, int],
    ceilings: Mapping[str, int],
    round_to: int = 1,
) -> Counts:
    """Keep counts meeting ``target`` with the least summed curve increase (greedy on the lower hull)."""
    current: Counts = {g.name: ceilings[g.name] for g in groups}
    if sizes.saved({g.name: floors[g.name] for g in groups}, target.metric) < target.saved - 0.01:
        raise _infeasible(sizes, {g.name: floors[g.name] for g in groups}, target)
    while sizes.saved(current, target.metric) < target.saved:
        size_now = _metric(sizes, current, target.metric)
        best: tuple[float, float, str, int] | None = None
        for g in groups:
            curve, c = curves[g.name], current[g.name]
            stops = sorted({k for k in curve.counts if floors[g.name] <= k < c} | {floors[g.name]})
            for k in stops:
                if k >= c:
                    continue
                freed = size_now - _metric(sizes, {**current, g.name: k}, target.metric)
                if freed <= 0:
                    continue
                cost = (curve.at(k) - curve.at(c)) / freed
                key = (cost, -freed, g.name, k)
                if best is None or key < best:
                    best = key
        if best is None:  # every group at its floor
            return current
        _, _, name, k = best
        moved = {**current, name: k}
        if sizes.saved(moved, target.metric) >= target.saved:
            return _land(groups, sizes, target, current, curves, floors, round_to)
        current = moved
    return current


def greedy_path(
    groups: Sequence[Group],
    sizes: SizeModel,
    metric: str,
    until: float,
    evaluate: Evaluate,
    orders: Mapping[str, Sequence[int]],
    floors: Mapping[str, int],
    ceilings: Mapping[str, int],
    step: float = 0.2,
    round_to: int = 1,
    path: list[tuple[Counts, float]] | None = None,
) -> list[tuple[Counts, float]]:
    """Joint greedy thinning, re-measured after every move: the states ``(counts, quantity)`` from
    ``ceilings`` until ``until`` of ``metric`` is saved (or every group is at its floor).

    Each move thins one group by ``step`` of its current units (at least one rounding step); the group
    whose move raises the quantity of the *whole masked model* least per unit of ``metric`` removed is
    thinned. Unlike separable curves, interactions between groups are seen. The path does not depend on
    the target, so a path computed for one level is extended, not recomputed, for a deeper one.
    """

    def masked(counts: Mapping[str, int]) -> Removed:
        return {
            g.name: list(orders[g.name][: g.num_units - counts[g.name]])
            for g in groups
            if counts[g.name] < g.num_units
        }

    if not path:
        start = {g.name: ceilings[g.name] for g in groups}
        path = [(start, float(evaluate(masked(start))))]
    current, value = path[-1]
    while sizes.saved(current, metric) < until:
        size_now = _metric(sizes, current, metric)
        best: tuple[float, str, int, float] | None = None
        for g in groups:
            c = current[g.name]
            k = round_keep(min(int(c * (1 - step)), c - 1), g.num_units, round_to, floors[g.name])
            if k >= c:
                k = round_keep(c - round_to, g.num_units, round_to, floors[g.name])
            if k >= c:
                continue
            moved = {**current, g.name: k}
            freed = size_now - _metric(sizes, moved, metric)
            if freed <= 0:
                continue
            v = float(evaluate(masked(moved)))
            key = ((v - value) / freed, g.name, k, v)
            if best is None or key < best:
                best = key
        if best is None:
            break
        _, name, k, value = best
        current = {**current, name: k}
        path.append((current, value))
    return path


def land_on_path(
    groups: Sequence[Group],
    sizes: SizeModel,
    target: Target,
    path: Sequence[tuple[Counts, float]],
    floors: Mapping[str, int],
    round_to: int = 1,
) -> Counts:
    """The first state of ``path`` that meets the target, refined between it and the one before."""
    for i, (counts, _) in enumerate(path):
        if sizes.saved(counts, target.metric) >= target.saved:
            if i == 0:
                return counts
            before = path[i - 1][0]
            name = next(n for n in counts if counts[n] != before[n])
            curve = Curve(name, (before[name], counts[name]), (path[i - 1][1], path[i][1]))
            # only the group the path thinned last is known to be the cheapest to thin further
            others = {g.name: Curve(g.name, (g.num_units, 0), (0.0, 1e12)) for g in groups}
            return _land(groups, sizes, target, before, others | {name: curve}, floors, round_to)
    last = path[-1][0]
    if sizes.saved(last, target.metric) < target.saved - TOLERANCE:
        raise _infeasible(sizes, last, target)
    return last
