"""Groups of transformer models: attention heads and feed-forward neurons (see blocks.py for why these
are written directly instead of traced). The residual stream (hidden size), embeddings and the
classifier are never groups: cutting them touches every layer and the model's interface."""

from __future__ import annotations

import logging

from torch import nn

from .blocks import AttentionSpec, FFNSpec, find_blocks
from .heads import _slices, qkvo_head_groups


def bert_head_groups(model: nn.Module, a: AttentionSpec) -> list[dict]:
    units = [tuple(range(h * a.head_dim, (h + 1) * a.head_dim)) for h in range(a.num_heads)]
    slices = _slices(model, {a.q: units, a.k: units, a.v: units}, a.o, units)
    return [dict(name=f"{a.name}:heads", kind="head", layer=a.name, num_units=a.num_heads, slices=slices)]


def ffn_groups(model: nn.Module, f: FFNSpec) -> list[dict]:
    units = [(i,) for i in range(f.width)]
    slices = _slices(model, {p: units for p in f.ins}, f.out, units)
    return [dict(name=f"{f.name}:neurons", kind="neuron", layer=f.name, num_units=f.width, slices=slices)]


log = logging.getLogger(__name__)


def head_blocker(model: nn.Module, a: AttentionSpec) -> str | None:
    """Why the heads of ``a`` cannot be cut, or None.

    Parameters of the attention module besides its projections are only safe when they are shared by
    every head (one norm of ``head_dim``, Qwen3-style). Anything else is sized or indexed by heads:
    per-head norms in a ModuleList (StableLM ``qk_layernorm``: cutting heads without them would give
    each kept head another head's norm), q/k norms over all heads (OLMo2, Cohere) or relative-position
    bias tables with one column per head (Swin, BEiT); the surgery does not slice those."""
    owner = a.q.rsplit(".", 1)[0]
    projs = {a.q, a.k, a.v, a.o}
    for name, p in model.get_submodule(owner).named_parameters():
        full = f"{owner}.{name}"
        if any(full.startswith(proj + ".") for proj in projs):
            continue
        per_head = any(part.isdigit() for part in name.split("."))
        if per_head or tuple(p.shape) != (a.head_dim,):
            return f"{full} {tuple(p.shape)} depends on the heads"
    return None


def transformer_groups(model: nn.Module) -> list[dict] | None:
    """Raw groups of every attention and FFN block in model order, or None if the model has none."""
    attentions, ffns = find_blocks(model)
    if not attentions:
        return None
    ffn_by_layer = {f.name.rsplit(".", 1)[0]: f for f in ffns}
    raw: list[dict] = []
    for a in attentions:
        reason = head_blocker(model, a)
        if reason is not None:
            log.warning(
                "attention %s: head groups not offered (%s); its FFN is still grouped", a.name, reason
            )
        elif a.style == "bert":
            raw += bert_head_groups(model, a)
        else:
            raw += qkvo_head_groups(model, a)
        layer = a.name.rsplit(".", 1)[0]
        f = ffn_by_layer.pop(layer, None)
        if f is not None:
            raw += ffn_groups(model, f)
    for f in ffn_by_layer.values():  # an FFN whose layer prefix differs from its attention's
        raw += ffn_groups(model, f)
    return raw
