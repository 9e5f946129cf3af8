"""Head groups of any attention layout (layouts.py), grouped-query attention included, without tracing.

A unit of a head group is a set of query heads and a set of key-value heads; its slices are their
output rows in the projections (by the layout's packing, for fused projections), their input columns
in the output projection and their entries in the parameters the layout indexes by heads (norms,
relative-position bias tables).

torch-pruning's graph build never finishes on grouped-query attention (8 query / 4 key-value heads,
torch-pruning 1.6.1), so this is written directly. HF's ``repeat_kv`` (and Falcon's grouped packing)
gives query head ``h`` the key-value head ``h // n_rep`` and needs the same ``n_rep`` for every
key-value head. Two groups express what can be removed under that rule:

- ``"{attn}:heads"`` has ``n_rep`` units; unit ``j`` is the ``j``-th query head of *every* key-value
  group (query rows and output-projection columns), so any kept subset leaves equal-sized groups.
- ``"{attn}:kv_heads"`` has ``num_kv_heads`` units; unit ``k`` is key-value head ``k`` (its key and value
  rows) together with its ``n_rep`` query heads.

The two overlap on the query rows; the remaining query heads are (kept kv heads) x (kept slots).
Layouts that name a ``gqa`` attribute the module has (``num_key_value_groups`` in the LLaMA family)
always get both groups, even when ``n_rep`` is 1 (then ``:heads`` has a single unit and ``:kv_heads``
prunes whole heads), so group names stay the same from one pruning round to the next. Attention
without grouping has one ``:heads`` group whose units are whole heads (q, k, v rows, o columns).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .blocks import AttentionSpec, join, out_dim
from .group import ParamSlice
from .layouts import Extra as LayoutExtra

Unit = tuple[list[int], list[int]]  # (query heads, key-value heads)


def _block(h: int, d: int, start: int = 0) -> list[int]:
    return list(range(start + h * d, start + (h + 1) * d))


def projection_rows(a: AttentionSpec, q_heads: list[int], kv_heads: list[int]) -> dict[str, list[int]]:
    """The output rows of each projection module that belong to the given heads, by the packing."""
    d, n, kv = a.head_dim, a.num_heads, a.num_kv_heads
    packing = a.layout.packing if a.layout is not None else "separate"
    if packing == "separate":
        q = [i for h in q_heads for i in _block(h, d)]
        kvr = [i for h in kv_heads for i in _block(h, d)]
        return {a.q: q, a.k: kvr, a.v: list(kvr)}
    if packing == "split":
        rows = [i for h in q_heads for i in _block(h, d)]
        rows += [i for h in kv_heads for i in _block(h, d, n * d) + _block(h, d, (n + kv) * d)]
    elif packing == "interleaved":  # per head: q, k, v
        rows = [i for h in q_heads for i in range(3 * h * d, 3 * h * d + d)]
        rows += [i for h in kv_heads for i in range(3 * h * d + d, 3 * h * d + 3 * d)]
    elif packing == "sharded":  # per shard: q, v, k of its H / S heads (CodeGen)
        per = n // a.shards  # heads per shard (head_blocker refuses the heads otherwise)

        def at(h: int, part: int) -> list[int]:  # part 0, 1, 2: head h's q, v, k rows in its shard
            return _block(h % per, d, (h // per) * 3 * per * d + part * per * d)

        rows = [i for h in q_heads for i in at(h, 0)]
        rows += [i for h in kv_heads for i in at(h, 1) + at(h, 2)]
    else:  # "grouped": per key-value head, its n_rep query heads then its key and value
        r = n // kv
        rows = [i for h in q_heads for i in _block(h % r, d, (h // r) * (r + 2) * d)]
        rows += [i for g in kv_heads for i in range(g * (r + 2) * d + r * d, (g + 1) * (r + 2) * d)]
    return {a.q: sorted(rows)}


Extra = tuple[str, str, int, str, int, bool]  # (parameter, role, dim, per, head, rescale)


def norm_statistic(module: nn.Module, size: int) -> str | None:
    """What a norm over ``size`` entries computes, probed on random rows (no class names): ``"rms"``
    (``w * x / sqrt(mean(x^2) + eps)``: exact after pruning with its kept weights rescaled),
    ``"mean"`` (invariant to a shift of its input: it subtracts the mean, LayerNorm), or None (a
    form prunekit does not describe, e.g. Gemma's ``(1 + w)``)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.device.type == "meta":
        return None
    probe = copy.deepcopy(module).float()  # bfloat16 models: probe in float32
    x = torch.randn(4, size, generator=torch.Generator().manual_seed(0)) * 2.0
    with torch.no_grad():
        y, shifted = probe(x), probe(x + 1.7)
        if torch.allclose(y, shifted, rtol=1e-4, atol=1e-5):
            return "mean"
        wx = x * probe.weight.reshape(-1)
        scale = (y * wx).sum(-1) / (wx * wx).sum(-1)  # y = scale * w * x, if it is an RMS norm
        fits = (y - scale[:, None] * wx).norm() <= 1e-5 * y.norm()
        rms = (x * x).mean(-1).rsqrt()
    return "rms" if fits and torch.allclose(scale, rms, rtol=1e-3) else None


def _all_heads(e: LayoutExtra, full: str, modules: dict, size: int) -> tuple[str, bool] | str:
    """(per, rescale) of a parameter of a norm over all heads' rows, or why the heads cannot be cut."""
    if not e.all_heads:
        return f"{full} normalises over all heads together, so cutting heads would change it"
    owner = modules.get(full.rsplit(".", 1)[0])
    kind = norm_statistic(owner, size) if owner is not None else None
    if kind is None:
        return f"{full} belongs to a norm over all heads whose form prunekit does not describe"
    return ("rows" if kind == "rms" else "rows_mean"), e.all_heads == "rescale"


def extra_entries(a: AttentionSpec, modules: dict, tensors: dict) -> list[Extra] | str:
    """The layout's head-indexed parameters present in this module: (name, role "q" | "kv", dim, per,
    head, rescale) with per "head" (one entry per head), "whole" (every entry of the parameter of
    the per-head module of ``head``), "rows" (``head_dim`` entries per head: of an RMS norm over all
    heads, or a projection's output rows, ``Extra.rows``) or "rows_mean" (the same of a
    mean-subtracting norm: approximate after a prune). A string says why the heads cannot be cut: a
    size that fits neither, or a norm over all heads that the layout does not allow to cut."""
    out: list[Extra] = []
    for e in a.layout.extras if a.layout is not None else ():
        full = join(a.name, e.path)
        count = a.num_heads if e.role == "q" else a.num_kv_heads
        if e.per_module:
            listed = modules.get(full)
            if listed is None:
                continue
            if not isinstance(listed, nn.ModuleList) or len(listed) != count:
                return f"{full} holds {len(listed) if isinstance(listed, nn.ModuleList) else '?'} modules"
            for h, sub in enumerate(listed):
                out += [(f"{full}.{h}.{p}", e.role, 0, "whole", h, False) for p, _ in sub.named_parameters()]
            continue
        t = tensors.get(full)
        if t is None:
            continue
        size = t.shape[e.dim] if e.dim < t.dim() else -1
        if e.rows:  # a projection's output rows, heads x head_dim (DeBERTa's pos_key_proj)
            if e.dim != 0 or size != count * a.head_dim:
                return f"{full} {tuple(t.shape)} does not hold heads x head_dim rows"
            out.append((full, e.role, 0, "rows", -1, False))
            continue
        if size == a.head_dim and size != count:
            continue  # one norm of head_dim shared by every head (Qwen3): stays whole
        if size == count and size != count * a.head_dim:
            out.append((full, e.role, e.dim, "head", -1, False))
        elif size == count * a.head_dim and count > 1 and t.dim() == 1:  # OLMo2: a norm over all heads
            found = _all_heads(e, full, modules, size)
            if isinstance(found, str):
                return found
            out.append((full, e.role, e.dim, found[0], -1, found[1]))
        else:
            return f"{full} {tuple(t.shape)} depends on the heads"
    return out


def unit_slices(
    model: nn.Module, a: AttentionSpec, units: list[Unit], extras: list[Extra]
) -> list[ParamSlice]:
    """The slices of one attention module for the given units (q rows, k rows, v rows, o columns, then
    the head-indexed parameters)."""
    per_unit = [projection_rows(a, q, kv) for q, kv in units]
    slices = []
    for proj in dict.fromkeys((a.q, a.k, a.v)):
        module = model.get_submodule(proj)
        index = tuple(tuple(rows.get(proj, ())) for rows in per_unit)
        if not any(index):
            continue  # e.g. the key projection for units of query heads alone
        slices.append(ParamSlice(f"{proj}.weight", out_dim(module), index))
        if module.bias is not None:
            slices.append(ParamSlice(f"{proj}.bias", 0, index))
    o = model.get_submodule(a.o)
    o_index = tuple(tuple(i for h in q for i in _block(h, a.head_dim)) for q, _ in units)
    slices.append(ParamSlice(f"{a.o}.weight", 1 - out_dim(o), o_index))
    for name, role, dim, per, head, _ in extras:
        heads = [q if role == "q" else kv for q, kv in units]
        if per in ("rows", "rows_mean"):  # head_dim entries per head
            index = tuple(tuple(i for h in hs for i in _block(h, a.head_dim)) for hs in heads)
        elif per == "whole":
            size = model.get_parameter(name).shape[0]
            index = tuple(tuple(range(size)) if head in hs else () for hs in heads)
        else:  # one entry per head
            index = tuple(tuple(hs) for hs in heads)
        if any(index):
            slices.append(ParamSlice(name, dim, index))
    return slices


def head_units(model: nn.Module, a: AttentionSpec) -> list[tuple[str, str, list[Unit]]]:
    """(group suffix, kind, units) of one attention module: ``heads`` alone, or ``heads`` and ``kv_heads``."""
    if a.num_kv_heads <= 0 or a.num_heads % a.num_kv_heads != 0:
        raise ValueError(
            f"attention {a.name}: {a.num_heads} query heads do not divide into {a.num_kv_heads} key-value "
            f"heads; add '{a.name}' to ignore"
        )
    if a.shards > 1:  # unit j: slot j of every shard, so that every shard keeps as many heads
        per = a.num_heads // a.shards
        slots = [[s * per + j for s in range(a.shards)] for j in range(per)]
        return [("heads", "head", [(hs, hs) for hs in slots])]
    n_rep, kv = a.num_heads // a.num_kv_heads, a.num_kv_heads
    gqa = a.layout is not None and a.layout.gqa and hasattr(model.get_submodule(a.name), a.layout.gqa)
    if not (n_rep > 1 or gqa):
        return [("heads", "head", [([h], [h]) for h in range(a.num_heads)])]
    slots = [([k * n_rep + j for k in range(kv)], []) for j in range(n_rep)]
    groups = [(list(range(k * n_rep, (k + 1) * n_rep)), [k]) for k in range(kv)]
    return [("heads", "head", slots), ("kv_heads", "kv_head", groups)]
