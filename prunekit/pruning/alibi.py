"""ALiBi after a head prune: every kept head keeps its own slope.

ALiBi families build one position bias for all the model's heads, with slopes set by each head's
index and the head count, and hand the same tensor to every layer: Bloom as ``(batch x heads, 1,
keys)``, Falcon folded into the attention mask, ``(batch, heads, queries, keys)``. After some heads
of a layer are cut, that layer must add the rows of its *kept* heads. So a pruned layer records
which of the model's heads it kept (``prunekit_alibi_heads``, a non-persistent buffer, composed over
repeated prunes and rebuilt from the plan when a checkpoint loads), and a forward pre-hook selects
those rows from the layout's ``alibi`` keyword. The kept heads follow from the removed units of all
the layer's head groups, each unit's query heads given by the packing (:func:`kept_heads`), so that a
unit need not be one head (Falcon's grouped decoder: a query slot of every key-value group). The
hook reads everything from the module it is called on, so deep copies of the model keep working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.batch import device_of
from prunekit.structure.blocks import AttentionSpec
from prunekit.structure.heads import head_units

HEADS = "prunekit_alibi_heads"
KEYWORD = "_prunekit_alibi_keyword"


def alibi_attentions(attentions: Sequence[AttentionSpec]) -> list[AttentionSpec]:
    """The attention blocks whose forward takes an ALiBi bias of all the model's heads."""
    return [a for a in attentions if a.layout is not None and a.layout.alibi]


def kept_heads(model: nn.Module, a: AttentionSpec, removed_units: Mapping[str, Sequence[int]]) -> list[int]:
    """The heads of ``a`` (indices into its heads before surgery) that no removed unit holds, in
    the order surgery leaves them. A unit is a set of query heads by the layout's packing (heads.py):
    one head; one slot of every key-value group (``:heads``, grouped-query attention); a key-value
    head with its query heads (``:kv_heads``). Surgery keeps rows in order and every packing orders a
    layer's heads by index, so the kept heads sorted are the pruned layer's heads."""
    gone: set[int] = set()
    for suffix, _, units in head_units(model, a):  # reads a's counts, from before surgery
        for u in removed_units.get(f"{a.name}:{suffix}", ()):
            gone.update(units[u][0])
    return [h for h in range(a.num_heads) if h not in gone]


def keep_alibi_heads_(
    model: nn.Module, attentions: Sequence[AttentionSpec], removed_units: Mapping[str, Sequence[int]]
) -> None:
    """After surgery: each ALiBi layer of ``attentions`` (found before it) records its kept heads,
    as indices into the model's full head set, and selects their bias rows from then on."""
    for a in alibi_attentions(attentions):
        heads = kept_heads(model, a, removed_units)
        if len(heads) == a.num_heads:
            continue
        module = model.get_submodule(a.name)
        before = getattr(module, HEADS, None)
        if before is None:
            before = torch.arange(a.num_heads)
        kept = torch.tensor(heads, dtype=torch.long)
        module.register_buffer(HEADS, before[kept].to(device=device_of(module)), persistent=False)
        if getattr(module, KEYWORD, None) is None:  # hooked once, however often it is pruned
            setattr(module, KEYWORD, (a.layout.alibi, a.layout.alibi_dim))
            module.register_forward_pre_hook(_select_bias_rows, with_kwargs=True)


def _select_bias_rows(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    key, dim = getattr(module, KEYWORD)
    bias, heads = kwargs.get(key), getattr(module, HEADS, None)
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(bias, torch.Tensor) or heads is None or hidden is None:
        return None
    if dim == 1:  # (batch, heads, ...); one row, shared by every head, is no ALiBi bias
        return None if bias.shape[1] == 1 else (args, {**kwargs, key: bias[:, heads]})
    batch = hidden.shape[0]
    total = bias.shape[0] // batch  # the model's head count: the bias was built for all of them
    rows = bias.view(batch, total, *bias.shape[1:])[:, heads]
    return args, {**kwargs, key: rows.reshape(batch * len(heads), *bias.shape[1:])}
