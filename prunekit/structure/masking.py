"""``mask_groups``: remove units at fixed weights by zeroing their parameter entries, then restore.

This is the "Level 2" view of a pruned model for the estimators: the same network with the removed
units' weights set to zero. Zeroing a unit's outgoing and incoming entries removes its contribution
exactly for conv / linear channels (a BatchNorm channel with zero weight and bias outputs 0), attention
heads (zero value rows and output columns) and FFN neurons; LayerNorm over a pruned dimension is the
exception (its statistics change when a channel is removed, not when it is zeroed). Only parameters are
zeroed; buffers such as BatchNorm running statistics are left alone (they do not matter once the
channel's weight and bias are zero). On exit every entry is written back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .group import Group
from .sizes import check_groups_match


@contextmanager
def mask_groups(
    model: nn.Module, groups: Sequence[Group], removed: Mapping[str, Sequence[int]]
) -> Iterator[nn.Module]:
    """Within the block, the units ``removed[g]`` of each group are zeroed in place."""
    check_groups_match(model, groups)
    by_name = {g.name: g for g in groups}
    params = dict(model.named_parameters())
    saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
    for name, units in removed.items():
        if name not in by_name:
            raise ValueError(f"mask_groups: unknown group {name!r}; use names from find_groups(model)")
        g = by_name[name]
        bad = [u for u in units if not 0 <= int(u) < g.num_units]
        if bad:
            raise ValueError(f"mask_groups: units {bad[:5]} of group {name!r} are outside [0, {g.num_units})")
    try:
        with torch.no_grad():
            for name, units in removed.items():
                for s in by_name[name].slices:
                    p = params.get(s.param)
                    if p is None:  # a buffer
                        continue
                    entries = sorted({i for u in units for i in s.index[int(u)]})
                    if not entries:
                        continue
                    idx = torch.tensor(entries, dtype=torch.long, device=p.device)
                    saved.append((p, s.dim, idx, p.index_select(s.dim, idx).clone()))
                    p.index_fill_(s.dim, idx, 0.0)
        yield model
    finally:
        with torch.no_grad():
            for p, dim, idx, values in reversed(saved):  # reverse order: overlapping slices end original
                p.index_copy_(dim, idx, values)
