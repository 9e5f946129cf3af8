"""Heads of q/k/v/o-projection attention, grouped-query attention included, without tracing.

torch-pruning's graph build never finishes on grouped-query attention (8 query / 4 key-value heads,
torch-pruning 1.6.1), so the LLaMA family is described directly. HF's ``repeat_kv`` gives query head
``h`` the key-value head ``h // n_rep`` (``n_rep`` = query heads per key-value head) and needs the same
``n_rep`` for every key-value head. Two groups express what can be removed under that rule:

- ``"{attn}:heads"`` has ``n_rep`` units; unit ``j`` is the ``j``-th query head of *every* key-value
  group (query rows and output-projection columns), so any kept subset leaves equal-sized groups.
- ``"{attn}:kv_heads"`` has ``num_kv_heads`` units; unit ``k`` is key-value head ``k`` (its key and value
  rows) together with its ``n_rep`` query heads.

The two overlap on the query rows; the remaining query heads are (kept kv heads) x (kept slots).
Modules with a ``num_key_value_groups`` attribute (the LLaMA family) always get both groups, even when
``n_rep`` is 1 (then ``:heads`` has a single unit and ``:kv_heads`` prunes whole heads), so group names
stay the same from one pruning round to the next. Attention without grouping (ViT in
transformers >= 5) has one ``:heads`` group whose units are whole heads (q, k, v rows, o columns).
"""

from __future__ import annotations

from torch import nn

from .blocks import AttentionSpec
from .group import ParamSlice


def _rows(heads: list[int], head_dim: int) -> tuple[int, ...]:
    return tuple(i for h in heads for i in range(h * head_dim, (h + 1) * head_dim))


def _slices(
    model: nn.Module, per_unit: dict[str, list[tuple[int, ...]]], out_proj: str, o_units: list
) -> tuple[ParamSlice, ...]:
    """Rows of each projection in ``per_unit`` (weight and bias), then columns of ``out_proj``."""
    slices = []
    for proj, index in per_unit.items():
        slices.append(ParamSlice(f"{proj}.weight", 0, tuple(index)))
        if model.get_submodule(proj).bias is not None:
            slices.append(ParamSlice(f"{proj}.bias", 0, tuple(index)))
    slices.append(ParamSlice(f"{out_proj}.weight", 1, tuple(o_units)))
    return tuple(slices)


def qkvo_head_groups(model: nn.Module, a: AttentionSpec) -> list[dict]:
    """Raw group descriptions (name, kind, layer, num_units, slices) for one q/k/v/o attention module."""
    if a.num_kv_heads <= 0 or a.num_heads % a.num_kv_heads != 0:
        raise ValueError(
            f"attention {a.name}: {a.num_heads} query heads do not divide into {a.num_kv_heads} key-value "
            f"heads; add '{a.name}' to ignore"
        )
    d, n_rep = a.head_dim, a.num_heads // a.num_kv_heads
    grouped = n_rep > 1 or hasattr(model.get_submodule(a.name), "num_key_value_groups")
    if not grouped:
        units = [_rows([h], d) for h in range(a.num_heads)]
        slices = _slices(model, {a.q: units, a.k: units, a.v: units}, a.o, units)
        return [dict(name=f"{a.name}:heads", kind="head", layer=a.name, num_units=a.num_heads, slices=slices)]
    slot_rows = [_rows([k * n_rep + j for k in range(a.num_kv_heads)], d) for j in range(n_rep)]
    heads = _slices(model, {a.q: slot_rows}, a.o, slot_rows)
    group_q = [_rows(list(range(k * n_rep, (k + 1) * n_rep)), d) for k in range(a.num_kv_heads)]
    kv_rows = [_rows([k], d) for k in range(a.num_kv_heads)]
    kv = _slices(model, {a.q: group_q, a.k: kv_rows, a.v: kv_rows}, a.o, group_q)
    return [
        dict(name=f"{a.name}:heads", kind="head", layer=a.name, num_units=n_rep, slices=heads),
        dict(name=f"{a.name}:kv_heads", kind="kv_head", layer=a.name, num_units=a.num_kv_heads, slices=kv),
    ]
