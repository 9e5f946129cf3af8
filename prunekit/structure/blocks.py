"""Find the attention and feed-forward blocks of transformer models by their structure.

Why direct adapters instead of torch-pruning's traced graph for transformers: a head or an FFN neuron
is a fixed, known set of rows and columns, so it is cleaner to state than to recover from a trace; the
trace of HF models is slow, breaks on their control flow and never finishes on grouped-query attention
(torch-pruning 1.6.1). Detection goes by attribute names, not class names, so look-alike families
(RoBERTa, ELECTRA, MiniLM as BERT; Mistral, Qwen2 as LLaMA) are covered too.

Three attention styles are known:
- "qkvo": children ``q_proj, k_proj, v_proj, o_proj`` (Linear) and an int ``head_dim`` (LLaMA family,
  ViT in transformers >= 5); ``k_proj`` may have fewer heads (grouped-query attention).
- "lin": ``q_lin, k_lin, v_lin, out_lin`` and ``attention_head_size`` (DistilBERT).
- "bert": child ``self`` (or ``attention``) with Linear ``query, key, value`` and int
  ``attention_head_size``, and child ``output`` with Linear ``dense`` (BERT family, ViT before
  transformers 5).
Feed-forward blocks are looked for next to each attention module: ``gate_proj/up_proj/down_proj``,
``fc1/fc2``, ``lin1/lin2``, or ``intermediate.dense`` with ``output.dense``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class AttentionSpec:
    name: str  # the module that owns the heads (group names are f"{name}:heads")
    style: str  # "qkvo" | "lin" | "bert"
    q: str  # module names of the projections
    k: str
    v: str
    o: str
    head_dim: int
    num_heads: int
    num_kv_heads: int


@dataclass(frozen=True)
class FFNSpec:
    name: str  # group name is f"{name}:neurons"
    ins: tuple[str, ...]  # projections whose output rows are the neurons (up, gate / fc1)
    out: str  # projection whose input columns are the neurons (down / fc2)
    width: int


def _linear(module: nn.Module, attr: str) -> nn.Linear | None:
    child = getattr(module, attr, None)
    return child if isinstance(child, nn.Linear) else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_QKVO = (  # (projection names, head-size attribute, style)
    (("q_proj", "k_proj", "v_proj", "o_proj"), "head_dim", "qkvo"),
    (("q_lin", "k_lin", "v_lin", "out_lin"), "attention_head_size", "lin"),  # DistilBERT
)


def _attention(name: str, m: nn.Module) -> AttentionSpec | None:
    for names, size_attr, style in _QKVO:
        projs = [_linear(m, a) for a in names]
        head_dim = getattr(m, size_attr, None)
        if all(p is not None for p in projs) and isinstance(head_dim, int) and head_dim > 0:
            q, k = projs[0], projs[1]
            return AttentionSpec(
                name,
                style,
                *(_join(name, a) for a in names),
                head_dim,
                q.out_features // head_dim,
                k.out_features // head_dim,
            )
    out = getattr(m, "output", None)
    if out is None or _linear(out, "dense") is None:
        return None
    for child in ("self", "attention"):  # BERT; ViT in transformers < 5
        sa = getattr(m, child, None)
        if sa is None or any(_linear(sa, a) is None for a in ("query", "key", "value")):
            continue
        size = getattr(sa, "attention_head_size", None)
        if not isinstance(size, int) or size <= 0:
            continue
        heads = sa.query.out_features // size
        inner = _join(name, child)
        projs = (_join(inner, "query"), _join(inner, "key"), _join(inner, "value"))
        return AttentionSpec(name, "bert", *projs, _join(name, "output.dense"), size, heads, heads)
    return None


def _ffn(layer_name: str, layer: nn.Module, attention_name: str) -> FFNSpec | None:
    for child_name, child in layer.named_children():
        full = _join(layer_name, child_name)
        if full == attention_name:
            continue
        gate, up, down = (_linear(child, a) for a in ("gate_proj", "up_proj", "down_proj"))
        if gate is not None and up is not None and down is not None:
            ins = (_join(full, "gate_proj"), _join(full, "up_proj"))
            return FFNSpec(full, ins, _join(full, "down_proj"), down.in_features)
        for up_name, down_name in (("fc1", "fc2"), ("lin1", "lin2")):
            up, down = _linear(child, up_name), _linear(child, down_name)
            if up is not None and down is not None:
                return FFNSpec(full, (_join(full, up_name),), _join(full, down_name), down.in_features)
    inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if inter is not None and out is not None and _linear(inter, "dense") and _linear(out, "dense"):
        name = _join(layer_name, "intermediate")
        return FFNSpec(
            name, (_join(name, "dense"),), _join(layer_name, "output.dense"), out.dense.in_features
        )
    return None


def find_blocks(model: nn.Module) -> tuple[list[AttentionSpec], list[FFNSpec]]:
    """All self-attention and feed-forward blocks, in model order."""
    attentions: list[AttentionSpec] = []
    ffns: list[FFNSpec] = []
    for name, module in model.named_modules():
        spec = _attention(name, module)
        if spec is None:
            continue
        attentions.append(spec)
        layer_name = name.rsplit(".", 1)[0] if "." in name else ""
        ffn = _ffn(layer_name, model.get_submodule(layer_name), name)
        if ffn is not None and all(f.name != ffn.name for f in ffns):
            ffns.append(ffn)
    return attentions, ffns


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention module by its class name ("Attention" or "Attn", any case).

    The one name rule of prunekit: MAC counting uses it for modules of any style, and
    :func:`unrecognised_attention` for the modules that :func:`find_blocks` cannot describe."""
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


def unrecognised_attention(model: nn.Module, ignore: tuple[str, ...] = ()) -> str | None:
    """The first attention module of an HF model that no style above matches, or None.

    Tracing cannot split such a module's projections into heads (it would cut single channels and
    break the head reshape), so such models must be refused rather than traced."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) is None:
        return None
    for name, m in model.named_modules():
        if any(fnmatch.fnmatchcase(name, p) for p in ignore):
            continue  # an ignored layer is never inspected
        if is_attention(m) and any(True for _ in m.parameters()):
            return f"{name} ({type(m).__name__})"
    return None
