"""Addressing parameter entries by unit: groups → units → slices, reductions over them, and masking.

A *unit* is a list of ``(param name, dim, index)``: the entries ``index`` along ``dim`` of that tensor
(``dim=None``: the whole tensor). A prunekit :class:`~prunekit.structure.group.Group` has ``num_units`` units,
one per output channel / head / neuron; a dict ``{name: [param names]}`` is a parameter partition whose
units are its parameter tensors. Used by the estimators (per-unit NTK and Hessian traces, Level-2
masking) and by the planner's importance scores, so both add up the same entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .group import Group, ParamSlice
from .masking import mask_groups

Groups = Sequence[Group] | Mapping[str, Sequence[str]]
Unit = list[tuple[str, int | None, Tensor | None]]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the NTK is taken over: those with ``requires_grad`` (frozen ones are constants)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def module_partition(model: nn.Module) -> dict[str, list[str]]:
    """A true partition of the trainable parameters by owning module (for per-layer traces)."""
    out: dict[str, list[str]] = {}
    for name in trainable_parameters(model):
        out.setdefault(name.rpartition(".")[0] or "(root)", []).append(name)
    return out


def normalise_groups(groups: Groups, model: nn.Module) -> tuple[list[tuple[str, list[Unit]]], bool]:
    """Groups as ``[(name, units)]``, and whether they partition the trainable parameters.

    A dict must be a partition (disjoint, covering every trainable parameter), else ValueError. Slices
    on buffers (e.g. BatchNorm running statistics) are kept for masking; they carry no gradient.
    """
    known = dict(model.named_parameters()) | dict(model.named_buffers())
    if isinstance(groups, Mapping):
        return _partition_units(groups, trainable_parameters(model)), True
    out = []
    for g in groups:
        if not isinstance(g, Group):
            raise ValueError(f"groups must be prunekit Group objects or a dict; got {type(g).__name__}")
        units: list[Unit] = [[] for _ in range(g.num_units)]
        for s in g.slices:
            if s.param not in known:
                raise ValueError(
                    f"group {g.name!r}: {s.param!r} is neither a parameter nor a buffer of the model"
                )
            if len(s.index) != g.num_units:
                raise ValueError(
                    f"group {g.name!r}: slice {s.param!r} lists {len(s.index)} units, expected {g.num_units}"
                )
            for u, idx in enumerate(s.index):
                units[u].append((s.param, s.dim, torch.as_tensor(idx, dtype=torch.long)))
        out.append((g.name, units))
    return out, False


def _partition_units(groups: Mapping[str, Sequence[str]], trainable: Mapping[str, Tensor]) -> list:
    seen: dict[str, str] = {}
    out = []
    for gname, names in groups.items():
        if isinstance(names, str):
            raise ValueError(f"group {gname!r}: give a list of parameter names, not the string {names!r}")
        for p in names:
            if p not in trainable:
                raise ValueError(f"group {gname!r}: {p!r} is not a trainable parameter of the model")
            if p in seen:
                raise ValueError(
                    f"parameter {p!r} is in groups {seen[p]!r} and {gname!r}; a partition is disjoint"
                )
            seen[p] = gname
        out.append((str(gname), [[(p, None, None)] for p in names]))
    missing = [p for p in trainable if p not in seen]
    if missing:
        raise ValueError(
            f"a dict of groups must partition the trainable parameters; {len(missing)} are missing "
            f"(first: {missing[0]!r}); use module_partition(model) or add a group for the rest"
        )
    return out


class UnitReducer:
    """Sums a dict of per-entry values (e.g. squared gradients) over each unit and over the group's union.

    Built once per group; the common case (each tensor sliced once per unit along one dim) reduces the
    tensor to a vector along that dim and indexes it. Overlapping slices of one tensor (the same tensor
    sliced along two dims in one group) fall back to boolean masks, so every entry counts once per unit.
    """

    def __init__(self, units: list[Unit], shapes: Mapping[str, torch.Size]):
        self.num_units = len(units)
        by_param: dict[str, list[tuple[int, int | None, Tensor | None]]] = {}
        for u, unit in enumerate(units):
            for pname, dim, idx in unit:
                if pname in shapes:  # buffers and frozen parameters have no gradient
                    by_param.setdefault(pname, []).append((u, dim, idx))
        self.fast: list[tuple[str, int | None, Tensor, Tensor, Tensor]] = []
        self.masked: list[tuple[str, list[Tensor], Tensor]] = []
        for pname, entries in by_param.items():
            dims = {d for _, d, _ in entries}
            owners = [u for u, _, _ in entries]
            if len(dims) == 1 and len(set(owners)) == len(owners):
                (dim,) = dims
                if dim is None:
                    idx, owner, union = torch.zeros(len(owners), dtype=torch.long), torch.tensor(owners), None
                else:
                    idx = torch.cat([i for _, _, i in entries])
                    owner = torch.cat([torch.full((len(i),), u) for u, _, i in entries])
                    union = torch.unique(idx)
                self.fast.append((pname, dim, idx, owner, union))
            else:
                masks = [torch.zeros(shapes[pname], dtype=torch.bool) for _ in range(self.num_units)]
                for u, dim, idx in entries:
                    if dim is None:
                        masks[u].fill_(True)
                    else:
                        masks[u].index_fill_(dim, idx, True)
                self.masked.append((pname, masks, torch.stack(masks).any(0)))

    def _to(self, device: torch.device) -> None:
        """Move the index tensors next to the values once, so that reductions stay on the accelerator."""
        if getattr(self, "_device", torch.device("cpu")) == device:
            return
        self.fast = [
            (p, d, i.to(device), o.to(device), None if u is None else u.to(device))
            for p, d, i, o, u in self.fast
        ]
        self.masked = [(p, [m.to(device) for m in ms], u.to(device)) for p, ms, u in self.masked]
        self._device = device

    def __call__(self, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(per-unit sums, sum over the union of the group's entries), in float64, on the values' device."""
        device = next(iter(values.values())).device if values else torch.device("cpu")
        self._to(device)
        units = torch.zeros(self.num_units, dtype=torch.float64, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        f64 = torch.float64  # sums accumulate in float64 whatever the values' dtype
        for pname, dim, idx, owner, union in self.fast:
            s = values.get(pname)
            if s is None:
                continue
            if dim is None:
                v = s.sum(dtype=f64).reshape(1)
                units.index_add_(0, owner, v[idx])
                total += v[0]
                continue
            v = s.sum(dim=[d for d in range(s.dim()) if d != dim], dtype=f64) if s.dim() > 1 else s.to(f64)
            units.index_add_(0, owner, v[idx])
            total += v[union].sum()
        for pname, masks, union in self.masked:
            s = values.get(pname)
            if s is None:
                continue
            for u, m in enumerate(masks):
                units[u] += s[m].sum(dtype=f64)
            total += s[union].sum(dtype=f64)
        return units, total


def removed_entry_masks(
    model: nn.Module, groups: Groups, removed: Mapping[str, Sequence[int] | None], buffers: bool = False
) -> dict[str, Tensor]:
    """name → boolean mask of the entries removed with ``removed`` (group name → unit indices; None: all).

    Only tensors with at least one removed entry appear. Trainable parameters only, unless ``buffers``
    (then also frozen parameters and buffers).
    """
    specs, _ = normalise_groups(groups, model)
    by_name = dict(specs)
    unknown = [g for g in removed if g not in by_name]
    if unknown:
        raise ValueError(
            f"removed names unknown group {unknown[0]!r}; known groups: {sorted(by_name)[:8]} ..."
        )
    tensors = dict(model.named_parameters()) | (dict(model.named_buffers()) if buffers else {})
    if not buffers:
        tensors = {k: v for k, v in tensors.items() if v.requires_grad}
    masks: dict[str, Tensor] = {}
    for gname, idxs in removed.items():
        units = by_name[gname]
        chosen = range(len(units)) if idxs is None else [int(i) for i in idxs]
        for u in chosen:
            if not 0 <= u < len(units):
                raise ValueError(f"group {gname!r} has {len(units)} units; unit index {u} is out of range")
            for pname, dim, idx in units[u]:
                if pname not in tensors:
                    continue
                mask = masks.setdefault(pname, torch.zeros(tensors[pname].shape, dtype=torch.bool))
                if dim is None:
                    mask.fill_(True)
                else:
                    mask.index_fill_(dim, idx, True)
    return masks


def as_groups(groups: Groups, model: nn.Module) -> list[Group]:
    """Groups as :class:`~prunekit.structure.Group` objects, for :func:`prunekit.structure.mask_groups`.

    A dict ``{name: [param names]}`` becomes one group per name whose unit ``u`` is its ``u``-th tensor
    (all of its entries along dim 0); Group objects pass through.
    """
    if not isinstance(groups, Mapping):
        return list(groups)  # mask_groups checks that they fit the model
    params = trainable_parameters(model)
    out = []
    for gname, units in _partition_units(groups, params):
        slices = []
        for u, ((pname, _, _),) in enumerate(units):
            if params[pname].dim() == 0:
                raise ValueError(
                    f"group {gname!r}: {pname!r} is a scalar; masking needs tensors with a dim 0"
                )
            rows = tuple(range(params[pname].shape[0]))
            index = tuple(rows if v == u else () for v in range(len(units)))
            slices.append(ParamSlice(pname, 0, index))
        size = sum(params[p].numel() for ((p, _, _),) in units)
        out.append(Group(gname, "tensor", gname, len(units), tuple(slices), size, 0, min_units=0))
    return out


@contextmanager
def masked_units(
    model: nn.Module, groups: Groups, removed: Mapping[str, Sequence[int] | None]
) -> Iterator[nn.Module]:
    """:func:`prunekit.structure.mask_groups` for any ``groups`` (also a dict partition), ``None`` meaning
    all of a group's units: the removed units' parameter entries are zeroed at fixed weights and restored
    bit for bit on exit; buffers (BatchNorm running statistics) are left alone."""
    as_group = as_groups(groups, model)
    sizes = {g.name: g.num_units for g in as_group}
    unknown = [g for g in removed if g not in sizes]
    if unknown:
        raise ValueError(f"removed names unknown group {unknown[0]!r}; known groups: {sorted(sizes)[:8]} ...")
    units = {g: list(range(sizes[g])) if idx is None else [int(i) for i in idx] for g, idx in removed.items()}
    with mask_groups(model, as_group, units):
        yield model
