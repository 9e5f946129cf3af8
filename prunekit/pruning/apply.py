"""``apply_plan_``: validate a plan against a model, then cut the model in place.

Surgery works from the groups' parameter slices alone (not from torch-pruning's pruners): along each
dimension of each parameter or buffer, the entries that no group removes survive, in their original
order. So the surgery removes exactly what the estimators and :func:`remaining_size` were told, for
CNNs and transformers alike. New ``nn.Parameter`` objects replace the old ones with the same
``requires_grad`` (frozen weights stay frozen); optimizers must be rebuilt afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..batch import Inputs, logits_of
from ..structure.blocks import find_blocks
from ..structure.group import Group
from ..structure.plan import Plan, validate_plan
from ..structure.sizes import check_groups_match, removed_entries
from .alibi import alibi_attentions, keep_alibi_heads_
from .mha import keep_mha_heads_


def _owners(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Every (module, attribute) holding each parameter / buffer, by canonical name (tied weights share)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    canonical.update({id(b): n for n, b in model.named_buffers()})
    owners: dict[str, list[tuple[nn.Module, str]]] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None and id(t) in canonical:
                owners.setdefault(canonical[id(t)], []).append((module, attr))
    return owners


def _cut(tensor: torch.Tensor, keep_by_dim: Mapping[int, torch.Tensor]) -> torch.Tensor:
    out = tensor.detach()
    for dim, idx in sorted(keep_by_dim.items()):
        out = out.index_select(dim, idx.to(out.device))
    return out.contiguous()


def _patch_standard(module: nn.Module, was: dict) -> None:
    """Update the size attributes of standard layers from their new weights."""
    w = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        if was["groups"] > 1 and was["groups"] == was["in"] == was["out"]:  # depthwise
            module.in_channels = module.out_channels = module.groups = w.shape[0]
        elif module.transposed:
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups
        else:
            if was["groups"] > 1:  # a grouped conv loses whole groups (structure/graph.py): same group size
                module.groups = was["groups"] * w.shape[0] // was["out"]
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
    elif isinstance(module, nn.RNNBase):  # one hidden size for all layers; forward reads _flat_weights
        module.input_size, module.hidden_size = module.weight_ih_l0.shape[1], module.weight_hh_l0.shape[1]
        module._init_flat_weights()
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers (GPT-2): (in, out)
        module.nf = w.shape[1]
    elif isinstance(module, (nn.modules.batchnorm._NormBase,)):
        ref = w if w is not None else module.running_mean
        module.num_features = ref.shape[0]
    elif isinstance(module, nn.LayerNorm) and w is not None:
        module.normalized_shape = (*module.normalized_shape[:-1], w.shape[-1])
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = w.shape[1]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = w.numel()
    elif isinstance(module, nn.GroupNorm) and w is not None:
        module.num_channels = w.shape[0]


def surgery_(model: nn.Module, groups: Sequence[Group], removed_units: Mapping[str, Sequence[int]]) -> None:
    """Remove the given units of the given groups from ``model`` in place (no validation)."""
    removed = {k: v for k, v in removed_entries(groups, removed_units).items() if v}
    if not removed:
        return
    owners = _owners(model)
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    plan: dict[str, dict[int, torch.Tensor]] = {}
    for (name, dim), gone in removed.items():
        size = tensors[name].shape[dim]
        keep = [i for i in range(size) if i not in gone]
        plan.setdefault(name, {})[dim] = torch.tensor(keep, dtype=torch.long)
    touched: dict[int, tuple[nn.Module, dict]] = {}
    for name in plan:
        for module, _ in owners[name]:
            if id(module) not in touched and isinstance(module, nn.modules.conv._ConvNd):
                touched[id(module)] = (
                    module,
                    {"groups": module.groups, "in": module.in_channels, "out": module.out_channels},
                )
            touched.setdefault(id(module), (module, {}))
    with torch.no_grad():  # cut everything first, so that a failure (out of memory) changes nothing
        cut = {name: _cut(tensors[name], keep_by_dim) for name, keep_by_dim in plan.items()}
        # a norm over all heads (OLMo2's q_norm) now averages squares over the kept rows only, a mean
        # larger by before / kept than the dense model's (whose removed rows are zero): scale it back
        for name in {n for g in groups for n in g.rescale if n in cut}:
            ratio = math.prod(tensors[name].shape[d] / len(keep) for d, keep in plan[name].items())
            cut[name] = cut[name] * math.sqrt(ratio)
    for name, new in cut.items():
        old = tensors[name]
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
            for module, attr in owners[name]:
                module._parameters[attr] = new
        else:
            for module, attr in owners[name]:
                module._buffers[attr] = new
    for module, was in touched.values():
        _patch_standard(module, was)


def _snapshot(model: nn.Module) -> tuple[list, list]:
    """By reference, no tensor copies: each module's class (a pruned nn.MultiheadAttention changes
    it, mha.py), attributes and a copy of each of its dicts (parameters, buffers, children: per-head
    module lists lose entries; forward pre-hooks), and each HF config's fields, so that a failed
    prune can be undone. All attributes, private ones too: an attribute surgery adds and a failed
    prune kept (alibi.py's hook marker) would make the next prune skip the hook it needs."""
    modules = [
        (m, type(m), dict(vars(m)), {k: dict(v) for k, v in vars(m).items() if isinstance(v, dict)})
        for m in model.modules()
    ]
    configs = {id(c): c for m in model.modules() if hasattr(c := getattr(m, "config", None), "to_dict")}
    return modules, [(c, dict(vars(c))) for c in configs.values()]  # patching sets top-level fields only


def _restore(undo: tuple[list, list]) -> None:
    modules, configs = undo
    for m, cls, attrs, dicts in modules:
        m.__class__ = cls
        for k, entries in dicts.items():  # the same dict objects: hook handles keep pointing at them
            attrs[k].clear()
            attrs[k].update(entries)
        m.__dict__.clear()
        m.__dict__.update(attrs)
    for c, fields in configs:
        c.__dict__.clear()
        c.__dict__.update(fields)


def _output_shape(model: nn.Module, example_inputs: Inputs) -> tuple:
    was_training = model.training
    try:
        model.eval()  # no dropout, no BatchNorm statistics update
        with torch.no_grad():
            return tuple(logits_of(model, example_inputs).shape)
    finally:
        model.train(was_training)


def apply_plan_(
    model: nn.Module,
    plan: Plan,
    example_inputs: Inputs,
    groups: Sequence[Group] | None = None,
    timeout_s: float = 120.0,
) -> nn.Module:
    """Keep exactly ``plan.keep[g]`` units of each group named in the plan; other groups stay whole.

    The whole plan is checked before anything changes (a bad plan raises ValueError and leaves the
    model as it was). Afterwards module attributes and the HF config are patched, a forward pass on
    ``example_inputs`` must give the same output shape (if it fails, the model is restored and
    RuntimeError raised), ``model._prunekit_plan`` holds the plan and
    ``model._prunekit_plans`` every plan applied so far. Pass ``groups`` from :func:`find_groups` to
    skip finding them again; otherwise they are found with ``plan.extra["ignore"]`` (if any) and groups
    that prunekit cannot cut are left out rather than reported, since the plan does not name them.
    """
    from ..structure.find import find_groups
    from .hf import patch_transformer

    if not isinstance(plan, Plan):
        raise ValueError(f"plan must be a prunekit Plan, got {type(plan).__name__}; use Plan.from_json(...)")
    if groups is None:
        ignore = plan.extra.get("ignore", ()) if isinstance(plan.extra, Mapping) else ()
        whole = any(str(n).endswith(":experts") for n in (*plan.keep, *plan.num_units))  # structure/moe.py
        groups = find_groups(
            model, example_inputs, ignore=ignore, timeout_s=timeout_s, strict=False, experts=whole
        )
    check_groups_match(model, groups)
    _check_experts(groups, plan)
    validate_plan(groups, plan)
    by_name = {g.name: g for g in groups}
    removed_units = {
        name: sorted(set(range(by_name[name].num_units)) - {int(i) for i in keep})
        for name, keep in plan.keep.items()
    }
    shape_before = _output_shape(model, example_inputs)
    undo = _snapshot(model)
    alibi = alibi_attentions(find_blocks(model)[0])  # their heads before surgery
    try:
        surgery_(model, groups, removed_units)
        keep_alibi_heads_(model, alibi, removed_units)
        keep_mha_heads_(model, removed_units)
        patch_transformer(model)
        shape_after = _output_shape(model, example_inputs)
    except Exception as exc:
        _restore(undo)
        raise RuntimeError(
            f"after pruning, the forward pass of {type(model).__name__} failed ({type(exc).__name__}: {exc}); "
            f"the model was restored. A layer it uses has a width fixed in code: add it to ignore"
        ) from exc
    if shape_after != shape_before:
        _restore(undo)
        raise RuntimeError(
            f"after pruning, {type(model).__name__} returns shape {shape_after} instead of {shape_before}; "
            f"the model was restored. This is a prunekit bug, please report it with the plan"
        )
    model._prunekit_plan = plan  # the latest plan; all of them, in order, in _prunekit_plans
    model._prunekit_plans = [*getattr(model, "_prunekit_plans", []), plan]
    return model


def _check_experts(groups: Sequence[Group], plan: Plan) -> None:
    """A router picks top-k experts per token: a plan keeping fewer than k of them is refused."""
    for g in groups:
        keep = plan.keep.get(g.name) if g.kind == "expert" else None
        if isinstance(keep, (list, tuple)) and len(keep) < g.min_units:
            raise ValueError(
                f"plan.keep[{g.name!r}] keeps {len(keep)} experts but its router picks {g.min_units} per "
                f"token (top_k); keep at least {g.min_units} or add '{g.name}' to ignore"
            )


def compose_plans(first: Plan, second: Plan) -> Plan:
    """One plan for the base model equal to applying ``first`` and then ``second`` (made for the model
    ``first`` produced): unit ``i`` of a pruned group is unit ``first.keep[g][i]`` of the base group.
    Iterative pruning uses this to keep a single plan relative to the base model for checkpoints."""
    keep = {g: list(v) for g, v in first.keep.items()}
    num_units = dict(first.num_units)
    for g, kept in second.keep.items():
        # the group's size in the model the first plan produced
        size = len(first.keep[g]) if g in first.keep else first.num_units.get(g, second.num_units.get(g))
        if size is None or second.num_units.get(g) != size or any(not 0 <= i < size for i in kept):
            raise ValueError(
                f"group {g!r} has {second.num_units.get(g)} units in the second plan but {size} after the "
                f"first: the second plan was not made for the model the first produced"
            )
        keep[g] = [first.keep[g][i] for i in kept] if g in first.keep else list(kept)
        num_units.setdefault(g, size)
    return Plan(
        keep=keep,
        num_units=num_units,
        target=dict(second.target),
        planner=second.planner,
        predicted_gap=second.predicted_gap,
        # counts follow the first plan's rounding where the second keeps a whole group: only the common
        # divisor of both holds for every count
        round_to=math.gcd(first.round_to, second.round_to),
        extra={**first.extra, **second.extra},
    )
