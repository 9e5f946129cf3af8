"""Head groups of PyTorch's ``nn.MultiheadAttention``, by its layout (layouts.TORCH_MHA_LAYOUTS).

nn.MultiheadAttention holds its q/k/v projections as its own parameters (``in_proj_weight``, or
``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight`` when kdim / vdim differ from embed_dim),
so find_blocks, which looks for projection modules, never describes it and torch-pruning sees it as
one opaque layer. Its heads are still a fixed set of rows and columns: head ``h`` owns rows
``h x head_dim ..`` of the query, key and value projections (at the split packing's offsets in the
packed weight and in the one ``[q | k | v]`` in_proj_bias of either form), the same entries of
``bias_k`` / ``bias_v`` (add_bias_kv, along their last dim) and those columns of ``out_proj``. The
row arithmetic is heads.py's, shared with every HF layout; add_zero_attn has no parameters.

Only the heads are grouped here. embed_dim, the width of the stream the module reads and writes,
stays whole: its group (found by the trace) is refused or left out like any other group that
couples to a layer prunekit cannot cut (find.py). The forward of a pruned module, whose attention
width is then below embed_dim, is prunekit.pruning.mha's.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging

from torch import nn

from .blocks import AttentionSpec, attribute, join
from .group import ParamSlice
from .heads import head_units, projection_rows
from .layouts import TORCH_MHA_LAYOUTS

log = logging.getLogger(__name__)
_PACKED = TORCH_MHA_LAYOUTS[0]  # in_proj_bias is packed [q | k | v] in either form


def mha_spec(name: str, m: nn.MultiheadAttention) -> AttentionSpec:
    """The heads of one nn.MultiheadAttention, counted off its weights (a pruned module too)."""
    layout = next(lay for lay in TORCH_MHA_LAYOUTS if all(attribute(m, k) == v for k, v in lay.when))
    d = int(m.head_dim)
    heads = m.out_proj.weight.shape[1] // d  # out_proj's inputs are the heads' outputs
    q, k, v = (join(name, layout.qkv),) * 3 if layout.qkv else (join(name, p) for p in layout.projections)
    return AttentionSpec(name, layout.family, q, k, v, join(name, layout.o), d, heads, heads, layout=layout)


def _rows(a: AttentionSpec, h: int) -> tuple[int, ...]:
    return tuple(range(h * a.head_dim, (h + 1) * a.head_dim))


def mha_slices(model: nn.Module, a: AttentionSpec) -> list[ParamSlice]:
    """The parameter slices of every head of ``a``, one unit per head."""
    ((_, _, units),) = head_units(model, a)  # one head per unit: no grouped key-value heads here
    per_unit = [projection_rows(a, q, kv) for q, kv in units]
    packed = dataclasses.replace(a, layout=_PACKED)
    slices = [
        ParamSlice(proj, 0, tuple(tuple(rows[proj]) for rows in per_unit))
        for proj in dict.fromkeys((a.q, a.k, a.v))
    ]
    tensors = dict(model.get_submodule(a.name).named_parameters(recurse=False))
    if tensors.get("in_proj_bias") is not None:
        index = tuple(tuple(projection_rows(packed, q, kv)[a.q]) for q, kv in units)
        slices.append(ParamSlice(join(a.name, "in_proj_bias"), 0, index))
    for bias in ("bias_k", "bias_v"):  # add_bias_kv: (1, 1, heads x head_dim), added to every batch
        if tensors.get(bias) is not None:
            slices.append(ParamSlice(join(a.name, bias), 2, tuple(_rows(a, h) for (h,), _ in units)))
    slices.append(ParamSlice(f"{a.o}.weight", 1, tuple(_rows(a, h) for (h,), _ in units)))
    return slices


def mha_groups(model: nn.Module, ignore: tuple[str, ...] = ()) -> list[dict]:
    """One raw ``"<module>:heads"`` group per nn.MultiheadAttention of ``model``, in model order;
    modules that ``ignore`` names (fnmatch) are not inspected (no warning about a module left alone)."""
    raws = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.MultiheadAttention) or any(fnmatch.fnmatchcase(name, p) for p in ignore):
            continue
        # the flag counts on the class that sets it: a subclass of prunekit's may have its own forward
        if type(m) is not nn.MultiheadAttention and not vars(type(m)).get("prunekit_inner_width", False):
            log.warning(
                "attention %s: head groups not offered (%s subclasses nn.MultiheadAttention with a forward "
                "prunekit does not know); add '%s' to ignore to leave its heads alone without this warning",
                name, type(m).__name__, name,
            )  # fmt: skip
            continue
        a = mha_spec(name, m)
        slices = tuple(mha_slices(model, a))
        raws.append(
            dict(name=f"{name}:heads", kind="head", layer=name, num_units=a.num_heads, slices=slices,
                 members=(name,))
        )  # fmt: skip
    return raws
