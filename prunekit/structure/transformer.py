"""Groups of transformer models: attention heads and feed-forward neurons (see blocks.py for why these
are written directly instead of traced). The residual stream (hidden size), embeddings and the
classifier are never groups: cutting them touches every layer and the model's interface."""

from __future__ import annotations

import fnmatch
import logging
import re

from torch import nn

from .blocks import AttentionSpec, FFNSpec, attribute, find_blocks, join, out_dim
from .group import ParamSlice
from .heads import extra_entries, head_units, unit_slices
from .moe import moe_groups

log = logging.getLogger(__name__)


def ffn_groups(model: nn.Module, f: FFNSpec) -> list[dict]:
    fused = f.layout is not None and f.layout.fused
    rows = [(i, f.width + i) if fused else (i,) for i in range(f.width)]
    slices = []
    for proj in f.ins:
        module = model.get_submodule(proj)
        slices.append(ParamSlice(f"{proj}.weight", out_dim(module), tuple(rows)))
        if module.bias is not None:
            slices.append(ParamSlice(f"{proj}.bias", 0, tuple(rows)))
    cols = tuple((i,) for i in range(f.width))
    slices.append(ParamSlice(f"{f.out}.weight", 1 - out_dim(model.get_submodule(f.out)), cols))
    return [
        dict(name=f"{f.name}:neurons", kind="neuron", layer=f.name, num_units=f.width, slices=tuple(slices))
    ]


def head_blocker(model: nn.Module, a: AttentionSpec, extras: list | str) -> str | None:
    """Why the heads of ``a`` cannot be cut, or None.

    Parameters next to the projections are safe when the layout slices them with the heads (per-head
    norms, relative-position bias tables: ``extras``) or when they are shared by every head (one norm
    of ``head_dim``, Qwen3-style). Anything else is sized or indexed by heads in a way the layout does
    not describe, and cutting the heads without it would be wrong."""
    if isinstance(extras, str):
        return extras
    if a.num_heads % a.shards:  # CodeGen: the forward would split heads across its shards
        return f"its {a.num_heads} heads do not divide into {a.shards} shards"
    module = model.get_submodule(a.name)
    for attr, value in a.layout.blocked_by if a.layout is not None else ():
        if attribute(module, attr) == value:
            return f"{attr} is {value}"
    owner = a.q.rsplit(".", 1)[0]
    covered = {a.q, a.k, a.v, a.o, *(join(a.name, c) for c in a.layout.independent if a.layout is not None)}
    sliced = {e[0] for e in extras}
    for name, p in model.get_submodule(owner).named_parameters():
        full = join(owner, name)
        if full in sliced or any(full.startswith(proj + ".") for proj in covered):
            continue
        per_head = any(part.isdigit() for part in name.split("."))
        if per_head or tuple(p.shape) != (a.head_dim,):
            return f"{full} {tuple(p.shape)} depends on the heads"
    return None


def _stack_key(a: AttentionSpec) -> str:
    """The group name shared by the layers of one stack (T5: every block reads layer 0's position bias,
    so head ``h`` is one unit across the stack), else the module's own name."""
    stack = a.layout.stack if a.layout is not None else ""
    if not stack:
        return a.name
    return re.sub(stack, lambda m: re.sub(r"\d+", "*", m.group(0)), a.name)


def _head_groups(model: nn.Module, members: list[AttentionSpec], modules: dict, tensors: dict) -> list[dict]:
    first = members[0]
    per_member = []
    for a in members:
        extras = extra_entries(a, modules, tensors)
        reason = head_blocker(model, a, extras)
        if reason is not None:
            log.warning(
                "attention %s: head groups not offered (%s); its FFN is still grouped (add '%s' to ignore "
                "to leave its heads alone without this warning)", a.name, reason, a.name,
            )  # fmt: skip
            return []
        per_member.append((a, extras))
        mean = sorted({n.rsplit(".", 1)[0] for n, _, _, per, _, _ in extras if per == "rows_mean"})
        if mean:  # LayerNorm over a pruned dimension: the one documented, expected difference
            log.warning(
                "attention %s: %s subtract the mean over all heads together, so a head prune is "
                "approximate (the kept heads' statistics change); add '%s' to ignore to keep its heads",
                a.name, ", ".join(mean), a.name,
            )  # fmt: skip
    if len(members) > 1 and len({(a.num_heads, a.num_kv_heads) for a in members}) > 1:
        log.warning(
            "attention %s: layers of one stack have different head counts; heads not offered", first.name
        )
        return []
    raws = []
    for suffix, kind, units in head_units(model, first):
        # dict.fromkeys: a table every layer of the stack reads (MPNet's encoder bias) is sliced once
        found = (s for a, extras in per_member for s in unit_slices(model, a, units, extras))
        slices = list(dict.fromkeys(found))
        raw = dict(name=f"{_stack_key(first)}:{suffix}", kind=kind, layer=first.name, num_units=len(units))
        raw.update(slices=tuple(slices), members=tuple(a.name for a in members))
        # norms over all heads: surgery rescales their kept weights (layouts.Extra.all_heads)
        raw["rescale"] = tuple(n for _, extras in per_member for n, *_, rescale in extras if rescale)
        raws.append(raw)
    return raws


def _ignored(members: list[AttentionSpec], ignore: tuple[str, ...]) -> bool:
    """Whether ``ignore`` names one of a stack's attention modules, which drops all of its head groups
    (find.py matches a group's members too), so they are never inspected (issue 12 item 2: no warning
    about a module the user left alone). Patterns on group names alone (``*:kv_heads``) are applied
    by find.py as usual."""
    return any(fnmatch.fnmatchcase(a.name, p) for a in members for p in ignore)


def transformer_groups(
    model: nn.Module, ignore: tuple[str, ...] = (), experts: bool = False
) -> list[dict] | None:
    """Raw groups of every attention and FFN block in model order, or None if the model has none.
    Attention stacks whose modules ``ignore`` names (fnmatch) are skipped; ``experts``: whole experts
    of mixture-of-experts blocks as units too (moe.py)."""
    attentions, ffns = find_blocks(model)
    if not attentions:
        return None
    modules = dict(model.named_modules())
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    order = {n: i for i, n in enumerate(modules)}
    stacks: dict[str, list[AttentionSpec]] = {}
    for a in attentions:
        stacks.setdefault(_stack_key(a), []).append(a)
    keyed = []
    for members in stacks.values():
        if _ignored(members, ignore):
            continue
        keyed += [(order[members[0].name], r) for r in _head_groups(model, members, modules, tensors)]
    keyed += [(order[f.out], r) for f in ffns for r in ffn_groups(model, f)]
    known = {r["name"] for _, r in keyed}  # a shared expert the FFN layouts already grouped
    keyed += [
        (order.get(r["layer"], len(order)), r) for r in moe_groups(model, known=known, experts=experts)
    ]  # moe.py
    return [r for _, r in sorted(keyed, key=lambda kr: kr[0])]
