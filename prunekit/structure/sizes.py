"""Exact parameter counts and consistent MAC estimates after keeping some units, without surgery.

Every group lists the parameter entries it removes (``ParamSlice``), so the size after pruning follows
from the slices alone: along each dimension of a parameter, an entry survives unless *some* group that
cuts that dimension removes it; the parameter keeps the product of its surviving extents. Overlapping
groups (a query head that belongs to both a ``:heads`` and a ``:kv_heads`` group) are therefore counted
once. MACs come from the terms of the one MAC counter (:mod:`prunekit.structure.macs`, which
:func:`prunekit.metrics.count_macs` sums): each Conv / Linear term costs (output positions) x (weight
entries), which stays exact when its weight shrinks, and attention's two matmuls scale with the
surviving query rows.

These MACs are a prediction made without surgery; :func:`prunekit.metrics.count_macs` measures the
pruned model, and tests/test_pruning_apply.py checks that the two agree exactly on each model family
it covers.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from ..batch import Inputs
from .group import Group
from .macs import MacTerm, count_mac_terms

Key = tuple[str, int]  # (parameter or buffer name, dim)


def _input_signature(inputs: Inputs) -> tuple:
    if isinstance(inputs, Mapping):
        return tuple(sorted((k, tuple(v.shape)) for k, v in inputs.items()))
    return (tuple(inputs.shape),)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mac_terms(model: nn.Module, example_inputs: Inputs) -> list[MacTerm]:
    """:func:`~prunekit.structure.macs.count_mac_terms`, cached per model while its shapes and the input
    shapes are unchanged (planners call :func:`remaining_size` many times)."""
    key = (
        tuple((n, tuple(p.shape)) for n, p in model.named_parameters()),
        _input_signature(example_inputs),
    )
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    terms = count_mac_terms(model, example_inputs)
    _CACHE[model] = (key, terms)
    return terms


def removed_entries(
    groups: Iterable[Group], removed_units: Mapping[str, Iterable[int]]
) -> dict[Key, set[int]]:
    """For each (parameter, dim), the union of the entries removed by the given units of each group."""
    by_name = {g.name: g for g in groups}
    out: dict[Key, set[int]] = {}
    for name, units in removed_units.items():
        group = by_name[name]
        for s in group.slices:
            bucket = out.setdefault((s.param, s.dim), set())
            for u in units:
                bucket.update(s.index[u])
    return out


def size_after(
    shapes: Mapping[str, tuple[int, ...]], terms: Sequence[MacTerm], removed: Mapping[Key, set[int]]
) -> tuple[int, float]:
    """(parameters, MACs per example) left when ``removed`` entries are cut from the parameters."""
    params = 0
    for name, shape in shapes.items():
        n = 1
        for d, size in enumerate(shape):
            n *= size - len(removed.get((name, d), ()))
        params += n
    macs = 0.0
    for t in terms:
        frac = 1.0
        if t.param is not None:  # None: a cost no group changes
            shape = shapes[t.param]
            for d in t.dims:
                frac *= (shape[d] - len(removed.get((t.param, d), ()))) / shape[d]
        macs += t.macs * frac
    return params, macs


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}  # shared weights counted once


def remaining_size(
    model: nn.Module, groups: Sequence[Group], keep_counts: Mapping[str, int], example_inputs: Inputs
) -> tuple[int, int]:
    """Exact parameter count and MACs per example after keeping ``keep_counts[g]`` units of each group.

    Groups missing from ``keep_counts`` keep all their units. Which units are kept does not change the
    count for the groups this package builds (their overlaps have product structure), so the first
    ``keep_counts[g]`` units are taken.
    """
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(keep_counts) - set(by_name))
    if unknown:
        raise ValueError(f"keep_counts names unknown groups {unknown[:5]}; use names from find_groups(model)")
    removed_units = {}
    for name, count in keep_counts.items():
        g = by_name[name]
        if not 0 <= int(count) <= g.num_units:
            raise ValueError(f"keep_counts[{name!r}] = {count} is outside [0, {g.num_units}]")
        removed_units[name] = range(int(count), g.num_units)
    check_groups_match(model, groups)
    terms = mac_terms(model, example_inputs)
    params, macs = size_after(param_shapes(model), terms, removed_entries(groups, removed_units))
    return params, int(round(macs))


def check_groups_match(model: nn.Module, groups: Sequence[Group]) -> None:
    """ValueError if the groups cut entries the model does not have (groups of another model, or of
    this model before it was pruned)."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    key = (tuple((n, tuple(t.shape)) for n, t in tensors.items()), tuple((g.name, id(g)) for g in groups))
    if _CHECKED.get(model) == key:  # planners ask again and again with the same groups
        return
    for g in groups:
        for s in g.slices:
            if len(s.index) != g.num_units:
                raise ValueError(
                    f"group {g.name!r}: its slice of {s.param} lists {len(s.index)} units, not {g.num_units}; "
                    "build groups with find_groups"
                )
            t = tensors.get(s.param)
            top = max((i for unit in s.index for i in unit), default=-1)
            if t is None or s.dim >= t.dim() or top >= t.shape[s.dim]:
                raise ValueError(
                    f"group {g.name!r} does not fit this model ({s.param}); call find_groups on this model"
                )
    _CHECKED[model] = key
