"""Groups of CNNs and MLPs from torch-pruning's dependency graph (the only module that drives it).

We use the graph for one thing: which entries of which parameters are coupled to each output channel
(a conv's rows, its BatchNorm entries, the next layer's input columns, every layer joined by a residual
add). The coupled entries become prunekit ``ParamSlice``s; surgery, masking and size counting then work
from the slices alone, so what the estimators see is exactly what surgery removes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..batch import Inputs, logits_of
from .group import ParamSlice
from .timeout import call_with_timeout


class UnsupportedLayer(Exception):
    """A group couples to a layer whose parameters prunekit cannot slice."""


def _item_slices(tp, dg, module, handler, name: str) -> list[tuple[str, int]]:
    """(parameter or buffer name, dim) cut by ``handler`` on ``module``; [] for parameter-free ops."""
    fn = tp.pruner.function
    pruner = getattr(handler, "__self__", None)
    out = getattr(handler, "__name__", "") == "prune_out_channels"
    if isinstance(module, nn.Parameter):
        # a parameter used outside a standard layer: torch-pruning guesses its channel dim (the last
        # one that is not 1), which is only certain for per-channel vectors such as a learned scale
        if sum(size > 1 for size in module.shape) > 1:
            raise UnsupportedLayer(
                f"{name} (a {tuple(module.shape)} parameter used outside a standard layer)"
            )
        return [(dg._param_to_name[module], dg.module2node[module].pruning_dim)]
    if isinstance(pruner, fn.DepthwiseConvPruner):
        if module.in_channels != module.out_channels:
            raise UnsupportedLayer(f"{name} (depthwise conv with channel multiplier)")
        return [(f"{name}.weight", 0)] + ([(f"{name}.bias", 0)] if module.bias is not None else [])
    if isinstance(pruner, fn.ConvPruner):
        if module.groups > 1:  # channels must stay divisible by the groups: not a per-channel cut
            raise UnsupportedLayer(f"{name} (grouped conv, groups={module.groups})")
        if out:
            bias = [(f"{name}.bias", 0)] if module.bias is not None else []
            return [(f"{name}.weight", 1 if module.transposed else 0)] + bias
        return [(f"{name}.weight", 0 if module.transposed else 1)]
    if isinstance(pruner, fn.LinearPruner):
        if out:
            return [(f"{name}.weight", 0)] + ([(f"{name}.bias", 0)] if module.bias is not None else [])
        return [(f"{name}.weight", 1)]
    if isinstance(pruner, (fn.BatchnormPruner, fn.InstanceNormPruner)):
        params = [(f"{name}.weight", 0), (f"{name}.bias", 0)] if module.affine else []
        stats = (
            [(f"{name}.running_mean", 0), (f"{name}.running_var", 0)] if module.track_running_stats else []
        )
        return params + stats
    if isinstance(pruner, fn.LayernormPruner):
        if not module.elementwise_affine:
            return []
        last = len(module.normalized_shape) - 1
        return [(f"{name}.weight", last)] + ([(f"{name}.bias", last)] if module.bias is not None else [])
    if isinstance(pruner, fn.PReLUPruner):
        return [(f"{name}.weight", 0)] if module.num_parameters > 1 else []
    if isinstance(pruner, fn.EmbeddingPruner):
        return [(f"{name}.weight", 1)]
    if isinstance(pruner, fn.GroupNormPruner) and module.num_groups == 1:
        return [(f"{name}.weight", 0), (f"{name}.bias", 0)] if module.affine else []
    if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
        raise UnsupportedLayer(f"{name} ({type(module).__name__})")
    return []  # element-wise add, concat, reshape, ...: no parameters


def _raw_group(tp, dg, model_names, root_name: str, root: nn.Module, group) -> dict:
    per_key: dict[tuple[str, int], list[list[int]]] = {}
    members: list[str] = []
    unsupported: list[str] = []
    n = dg.get_pruner_of_module(root).get_out_channels(root)
    sink = False
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        node, module = dep.target, dep.target.module
        if node.type == tp.ops.OPTYPE.OUTPUT or (
            not node.outputs and dg.is_out_channel_pruning_fn(dep.handler)
        ):
            sink = True  # this group changes the shape of what the model returns (the classifier)
        name = model_names.get(module) if isinstance(module, nn.Module) else dg._param_to_name.get(module)
        if isinstance(module, nn.Module) and name is not None and dg.is_out_channel_pruning_fn(dep.handler):
            members.append(name)
        try:
            keys = _item_slices(tp, dg, module, dep.handler, name or "?")
        except UnsupportedLayer as exc:
            unsupported.append(str(exc))
            continue
        for key in keys:
            units = per_key.setdefault(key, [[] for _ in range(n)])
            for i, r in zip(idxs, item.root_idxs, strict=True):
                units[r].append(int(i))
    slices = tuple(
        ParamSlice(p, d, tuple(tuple(sorted(set(u))) for u in units)) for (p, d), units in per_key.items()
    )
    kind = "channel" if isinstance(root, nn.modules.conv._ConvNd) else "neuron"
    return dict(
        name=f"{root_name}:out",
        kind=kind,
        layer=root_name,
        num_units=n,
        slices=slices,
        members=tuple(dict.fromkeys(members)),
        unsupported=tuple(unsupported),
        sink=sink,
    )


def graph_groups(model: nn.Module, example_inputs: Inputs, timeout_s: float) -> list[dict]:
    """Raw groups rooted at each Conv / Linear output, in model order, one per coupled set."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}

    def build() -> list[dict]:
        with torch.enable_grad():  # the trace follows autograd; the caller may be under no_grad
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=logits_of, verbose=False
            )
        raw, visited = [], set()
        for name, module in model.named_modules():
            if module in visited or module not in dg.module2node:
                continue
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            pruner = dg.get_pruner_of_module(module)
            n = pruner.get_out_channels(module)
            group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
            for item in group.items:
                if dg.is_out_channel_pruning_fn(item.dep.handler):
                    visited.add(item.dep.target.module)
            raw.append(_raw_group(tp, dg, names, name, module, group))
        return raw

    was_training = model.training
    hooks_before = {id(m): set(m._forward_hooks) for m in model.modules()}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # the trace follows autograd: a frozen stem would drop out of its residual group
        p.requires_grad_(True)
    try:
        return call_with_timeout(build, timeout_s, f"{type(model).__name__} (torch-pruning trace)")
    finally:
        model.train(was_training)  # the trace switches the model to eval mode
        for p in frozen:
            p.requires_grad_(False)
        for m in model.modules():  # an interrupted trace leaves its recording hooks behind
            for key in set(m._forward_hooks) - hooks_before.get(id(m), set()):
                m._forward_hooks.pop(key, None)
