"""Groups of CNNs and MLPs from torch-pruning's dependency graph (the only module that drives it).

We use the graph for one thing: which entries of which parameters are coupled to each output channel
(a conv's rows, its BatchNorm entries, the next layer's input columns, every layer joined by a residual
add). The coupled entries become prunekit ``ParamSlice``s; surgery, masking and size counting then work
from the slices alone, so what the estimators see is exactly what surgery removes.

Where torch-pruning 1.6.1 alone gets it wrong, we do our own part: the trace starts from every
output of a model (a tuple, a dict), not the first; the walk over the graph keeps every path's root
channels (a block used twice, both inputs of a product: a Linear reshaped into channels is one of
them); nn.LSTM / GRU / RNN are one opaque node whose hidden units are cut across all gates
and layers; a grouped conv loses whole groups (ties, merged in :mod:`.merge`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..batch import Inputs
from .merge import merge_units
from .timeout import call_with_timeout


class UnsupportedLayer(Exception):
    """A group couples to a layer whose parameters prunekit cannot slice."""


# A cut: (parameter or buffer name, dim, expand) where expand(i) lists the entries along dim that
# torch-pruning's channel index i owns (a recurrent layer's channel is one row per gate).
Cut = tuple[str, int, Callable[[int], tuple[int, ...]] | None]
# A tie: channels with equal tokens must go together (the channels of one group of a grouped conv).
Tie = Callable[[int], tuple]


def _gates(module: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(module.mode, 1)


def _recurrent_cuts(module: nn.RNNBase, name: str, out: bool) -> list[Cut]:
    """Hidden unit h of every layer at once (nn.LSTM / GRU / RNN keep one hidden_size for all layers):
    its row in each gate of weight_ih / weight_hh / biases, its weight_hh column, the next layer's
    input column. The input side is weight_ih_l0's columns."""
    if not out:  # every direction reads the input
        return [(f"{name}.weight_ih_l0{s}", 1, None) for s in ("", "_reverse")[: 1 + module.bidirectional]]
    if module.bidirectional or getattr(module, "proj_size", 0):
        raise UnsupportedLayer(f"{name} ({type(module).__name__} bidirectional or with proj_size)")
    hidden, gates = module.hidden_size, _gates(module)

    def rows(h: int) -> tuple[int, ...]:
        return tuple(g * hidden + h for g in range(gates))

    cuts: list[Cut] = []
    for layer in range(module.num_layers):
        cuts += [(f"{name}.weight_ih_l{layer}", 0, rows), (f"{name}.weight_hh_l{layer}", 0, rows)]
        cuts.append((f"{name}.weight_hh_l{layer}", 1, None))
        if layer > 0:
            cuts.append((f"{name}.weight_ih_l{layer}", 1, None))
        if module.bias:
            cuts += [(f"{name}.bias_ih_l{layer}", 0, rows), (f"{name}.bias_hh_l{layer}", 0, rows)]
    return cuts


def _grouped_conv_cuts(module: nn.modules.conv._ConvNd, name: str, out: bool) -> tuple[list[Cut], Tie]:
    """A grouped (not depthwise) conv loses whole groups, so that its groups stay equal: an output
    channel takes its weight row and bias; an input channel takes nothing of its own (a group's
    weight keeps its width); both tie the channel to its conv group."""
    if module.transposed:
        raise UnsupportedLayer(f"{name} (grouped transposed conv, groups={module.groups})")
    per_group = (module.out_channels if out else module.in_channels) // module.groups
    cuts: list[Cut] = []
    if out:
        cuts = [(f"{name}.weight", 0, None)] + (
            [(f"{name}.bias", 0, None)] if module.bias is not None else []
        )
    return cuts, lambda i: (name, i // per_group)


def _item_slices(tp, dg, module, handler, name: str) -> tuple[list[Cut], list[Tie]]:
    """The cuts made by ``handler`` on ``module`` ([] for parameter-free ops), and any ties."""
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
        return [(dg._param_to_name[module], dg.module2node[module].pruning_dim, None)], []
    if isinstance(pruner, _RecurrentPruner):
        return _recurrent_cuts(module, name, out), []
    if isinstance(pruner, fn.DepthwiseConvPruner):
        if module.in_channels != module.out_channels:
            raise UnsupportedLayer(f"{name} (depthwise conv with channel multiplier)")
        return _plain(
            [(f"{name}.weight", 0)] + ([(f"{name}.bias", 0)] if module.bias is not None else [])
        ), []
    if isinstance(pruner, fn.ConvPruner):
        if module.groups > 1:
            cuts, tie = _grouped_conv_cuts(module, name, out)
            return cuts, [tie]
        if out:
            bias = [(f"{name}.bias", 0)] if module.bias is not None else []
            return _plain([(f"{name}.weight", 1 if module.transposed else 0)] + bias), []
        return _plain([(f"{name}.weight", 0 if module.transposed else 1)]), []
    return _plain(_standard_slices(fn, module, pruner, out, name)), []


def _plain(keys: list[tuple[str, int]]) -> list[Cut]:
    return [(p, d, None) for p, d in keys]


def _standard_slices(fn, module, pruner, out: bool, name: str) -> list[tuple[str, int]]:
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
    if isinstance(module, nn.MultiheadAttention):  # its heads are grouped apart (structure/mha.py)
        raise UnsupportedLayer(f"{name} (MultiheadAttention: its embed_dim; its heads are {name}:heads)")
    if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
        raise UnsupportedLayer(f"{name} ({type(module).__name__})")
    return []  # element-wise add, concat, reshape, ...: no parameters


def _coupled(dg, root: nn.Module, fn, n: int) -> list[tuple]:
    """``(node, handler, [(idx, root idx)])`` of every pruning op that cutting the root's channels
    triggers, following torch-pruning's dependencies and index mappings.

    Our own walk rather than ``get_pruning_group``: that one stops at an op it has already seen with
    the same indices, so a module used twice (both halves of a split through one block) or both
    inputs of a product keep only the first path's root indices and a consumer's slice goes missing."""
    from torch_pruning._helpers import _HybridIndex

    start = (dg.module2node[root], fn, [_HybridIndex(idx=i, root_idx=i) for i in range(n)])
    stack, seen, items = [start], set(), []
    while stack:
        node, handler, idxs = stack.pop()
        fresh = [i for i in idxs if (node, handler, i.idx, i.root_idx) not in seen]
        if not fresh:
            continue
        seen.update((node, handler, i.idx, i.root_idx) for i in fresh)
        items.append((node, handler, fresh))
        for dep in node.dependencies:
            if dep.is_triggered_by(handler):
                mapped = fresh
                for mapping in dep.index_mapping:
                    if mapping is not None:
                        mapped = mapping(mapped)
                if mapped:
                    stack.append((dep.target, dep.handler, mapped))
    return items


def _raw_group(tp, dg, model_names, root_name: str, root: nn.Module, items: list[tuple]) -> dict:
    """The coupled ops of one root as a raw prunekit group, one unit per root channel (merged later)."""
    per_key: dict[tuple[str, int], list[list[int]]] = {}
    members: list[str] = []
    unsupported: list[str] = []
    n = dg.get_pruner_of_module(root).get_out_channels(root)
    ties: list[set] = [set() for _ in range(n)]
    sink = False
    for node, handler, idxs in items:
        module = node.module
        if node.type == tp.ops.OPTYPE.OUTPUT or (not node.outputs and dg.is_out_channel_pruning_fn(handler)):
            sink = True  # this group changes the shape of what the model returns (the classifier)
        name = model_names.get(module) if isinstance(module, nn.Module) else dg._param_to_name.get(module)
        if isinstance(module, nn.Module) and name is not None and dg.is_out_channel_pruning_fn(handler):
            members.append(name)
        try:
            cuts, item_ties = _item_slices(tp, dg, module, handler, name or "?")
        except UnsupportedLayer as exc:
            unsupported.append(str(exc))
            continue
        for param, dim, expand in cuts:
            units = per_key.setdefault((param, dim), [[] for _ in range(n)])
            for i in idxs:
                units[i.root_idx].extend(expand(int(i.idx)) if expand else (int(i.idx),))
        for tie in item_ties:
            for i in idxs:
                ties[i.root_idx].add(tie(int(i.idx)))
    kind = "channel" if isinstance(root, nn.modules.conv._ConvNd) else "neuron"
    return dict(
        name=f"{root_name}:out",
        kind=kind,
        layer=root_name,
        num_units=n,
        per_key=per_key,
        ties=ties,
        members=tuple(dict.fromkeys(members)),
        unsupported=tuple(unsupported),
        sink=sink,
    )


def _split_features(tp, dg, names: dict) -> set[str]:
    """Linears whose (batch, tokens, features) output is viewed with its features split (a plain-torch
    attention's qkv into heads): torch-pruning maps such a view as if nothing changed, so their
    neurons are not independent units; their groups are refused instead of cut wrongly."""
    from torch_pruning.dependency import shape_infer

    found = set()
    for node in list(dg.module2node.values()):
        grad_fn = node.grad_fn
        sizes = getattr(grad_fn, "_saved_self_sizes", getattr(grad_fn, "_saved_self_sym_sizes", None))
        if node.type != tp.ops.OPTYPE.RESHAPE or sizes is None or len(sizes) < 3:
            continue
        for source in node.inputs:
            if isinstance(source.module, nn.Linear) and source.module.out_features == int(sizes[-1]):
                couts = {shape_infer.infer_in_channels_recursively(dg, out, [0]) for out in node.outputs}
                if couts != {source.module.out_features}:
                    found.add(names[source.module])
    return found


class _RecurrentPruner:
    """Tells torch-pruning the channel counts of an nn.LSTM / GRU / RNN (it never prunes with it)."""

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size

    def get_out_channel_groups(self, layer: nn.RNNBase) -> int:
        return 1

    def get_in_channel_groups(self, layer: nn.RNNBase) -> int:
        return 1

    def prune_out_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
        raise NotImplementedError("prunekit cuts recurrent layers from its own slices")

    def prune_in_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
        raise NotImplementedError("prunekit cuts recurrent layers from its own slices")


class _Through(torch.autograd.Function):
    """``value`` as a single autograd step from ``sources``: the trace sees a recurrent layer as one
    node from its input to its outputs instead of its unrolled gates (whose chunking torch-pruning
    mis-indexes: a bare IndexError on a 2-layer GRU), and an nn.MultiheadAttention as one node from
    its query, key and value (its interior is no channel map: add_zero_attn's concatenation of a
    constant crashes torch-pruning's index mapping with a TypeError)."""

    @staticmethod
    def forward(ctx, value: Tensor, *sources: Tensor) -> Tensor:
        ctx.sources = len(sources)
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, ...]:
        return (None,) * (1 + ctx.sources)


def _opaque_recurrent_forward(m: nn.RNNBase) -> Callable:
    def forward(x, hx=None, _orig=m.forward):
        out, state = _orig(x, hx)
        if not isinstance(out, Tensor):  # a PackedSequence: traced as it is
            return out, state
        out = _Through.apply(out.detach(), x)
        states = state if isinstance(state, tuple) else (state,)
        states = tuple(_Through.apply(s.detach(), out) for s in states)
        return out, states if isinstance(state, tuple) else states[0]

    return forward


def _opaque_attention_forward(m: nn.MultiheadAttention) -> Callable:
    def forward(*args, _orig=m.forward, **kwargs):
        out, weights = _orig(*args, **kwargs)
        given = [*args[:3], *(kwargs[k] for k in ("query", "key", "value") if k in kwargs)]
        sources = list({id(t): t for t in given if isinstance(t, Tensor)}.values())  # q is k is v: once
        return _Through.apply(out.detach(), *sources), weights

    return forward


@contextmanager
def _opaque_layers(model: nn.Module) -> Iterator[None]:
    """Recurrent layers and nn.MultiheadAttention traced as single nodes (see _Through)."""
    patched = []
    for m in model.modules():
        if isinstance(m, (nn.RNNBase, nn.MultiheadAttention)):
            patched.append((m, m.__dict__.get("forward")))  # a forward set on the instance comes back
            opaque = _opaque_recurrent_forward if isinstance(m, nn.RNNBase) else _opaque_attention_forward
            m.forward = opaque(m)
    try:
        yield
    finally:
        for m, own in patched:
            del m.forward
            if own is not None:
                m.forward = own


def _all_outputs(model: nn.Module, inputs: Inputs) -> Tensor | list[Tensor]:
    """What the trace starts from: every tensor a plain model returns (a tuple, a dict, nested), so
    that no output's consumers are missed; the logits of an HF model (its caches are not outputs)."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    for attr in ("logits", "last_hidden_state"):
        if hasattr(out, attr) and isinstance(getattr(out, attr), Tensor):
            return getattr(out, attr)
    tensors, stack = [], [out]
    while stack:
        o = stack.pop(0)
        if isinstance(o, Tensor):
            tensors.append(o)
        elif isinstance(o, (tuple, list)):
            stack[:0] = list(o)
        elif isinstance(o, Mapping):
            stack[:0] = list(o.values())
    if not tensors:
        raise TypeError(f"{type(model).__name__} returns no tensor ({type(out).__name__}) to trace from")
    return tensors


def graph_groups(model: nn.Module, example_inputs: Inputs, timeout_s: float) -> list[dict]:
    """Raw groups rooted at each Conv / Linear / recurrent output, in model order, one per coupled set."""
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    roots = (nn.modules.conv._ConvNd, nn.Linear, nn.RNNBase)
    recurrent = {type(m): _RecurrentPruner() for m in model.modules() if isinstance(m, nn.RNNBase)}

    def build() -> list[dict]:
        with torch.enable_grad(), _opaque_layers(model):  # the trace follows autograd
            dg = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                forward_fn=_all_outputs,
                customized_pruners=recurrent,
                verbose=False,
            )
        raw, visited = [], set()
        for name, module in model.named_modules():
            if module in visited or module not in dg.module2node or not isinstance(module, roots):
                continue
            pruner = dg.get_pruner_of_module(module)
            n = pruner.get_out_channels(module)
            items = _coupled(dg, module, pruner.prune_out_channels, n)
            for node, handler, _ in items:
                if dg.is_out_channel_pruning_fn(handler):
                    visited.add(node.module)
            raw.append(_raw_group(tp, dg, names, name, module, items))
        split = _split_features(tp, dg, names)
        for r in raw:
            why = [
                f"{m} (its output features are reshaped, e.g. into attention heads)"
                for m in r["members"]
                if m in split
            ]
            r["unsupported"] = tuple(why) + r["unsupported"]
        return merge_units(raw)

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
