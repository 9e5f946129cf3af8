"""The dense references of the coverage tests, for HF and plain-torch models alike: norms with
random parameters (default norms are all equal, which would hide a norm given to the wrong head) and
the dense model with every removed unit's entries zeroed, which a prune must reproduce."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter of a module whose class name says norm: weights in [0.5, 1.5), biases +-0.2."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if "norm" not in type(module).__name__.lower():
                continue
            for name, p in module.named_parameters(recurse=False):
                r = torch.rand(p.shape, generator=g)
                p.copy_(r + 0.5 if name == "weight" else 0.4 * r - 0.2)
    return model


def zero_masked(model: nn.Module, groups: Sequence, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A deep copy of ``model`` with every entry of every removed unit set to zero (groups missing from
    ``keep`` stay whole): the dense reference a prune must reproduce."""
    dense = copy.deepcopy(model)
    tensors = dict(dense.named_parameters())
    tensors.update(dict(dense.named_buffers()))
    with torch.no_grad():
        for g in groups:
            if g.name not in keep:
                continue
            kept = set(int(u) for u in keep[g.name])
            for s in g.slices:
                index = [i for u in range(g.num_units) if u not in kept for i in s.index[u]]
                if index:
                    tensors[s.param].index_fill_(s.dim, torch.tensor(index, dtype=torch.long), 0.0)
    return dense
