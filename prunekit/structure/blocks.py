"""Find the attention and feed-forward blocks of transformer models from the family layouts.

Why direct adapters instead of torch-pruning's traced graph for transformers: a head or an FFN neuron
is a fixed, known set of rows and columns, so it is cleaner to state than to recover from a trace; the
trace of HF models is slow, breaks on their control flow and never finishes on grouped-query attention
(torch-pruning 1.6.1). Detection goes by attribute names (the layouts in layouts.py), not class names,
so look-alike families (RoBERTa, ELECTRA, MiniLM as BERT; Mistral, Qwen2 as LLaMA; OPT as BART) are
covered too. Head counts are read off the weights (the output projection has ``heads x head_dim``
input columns), so a pruned model is described as well as a dense one.

Feed-forward blocks are looked for inside the layer of each attention module (the outermost entry of
a ModuleList that holds it), outside any attention module.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from torch import nn

from .layouts import ATTENTION_LAYOUTS, FFN_LAYOUTS, AttentionLayout, FFNLayout


@dataclass(frozen=True)
class AttentionSpec:
    name: str  # the module that owns the heads (group names are f"{name}:heads")
    style: str  # the layout's family
    q: str  # module names of the projections (all three the fused projection's name when fused)
    k: str
    v: str
    o: str
    head_dim: int
    num_heads: int
    num_kv_heads: int
    layout: AttentionLayout | None = field(default=None, compare=False, repr=False)
    shards: int = 1  # "sharded" packing: the fused rows' model-parallel shards (CodeGen's mp_num)

    @property
    def fused(self) -> bool:
        return self.layout is not None and bool(self.layout.qkv)


@dataclass(frozen=True)
class FFNSpec:
    name: str  # group name is f"{name}:neurons"
    ins: tuple[str, ...]  # projections whose output rows are the neurons (up, gate / fc1)
    out: str  # projection whose input columns are the neurons (down / fc2)
    width: int
    layout: FFNLayout | None = field(default=None, compare=False, repr=False)
    layer: str = ""  # the transformer layer holding it (the key of its recorded widths)


def join(prefix: str, path: str) -> str:
    """``prefix.path``, where each leading ``../`` of ``path`` goes one module up from ``prefix``."""
    while path.startswith("../"):
        prefix, path = (prefix.rsplit(".", 1)[0] if "." in prefix else ""), path[3:]
    return f"{prefix}.{path}" if prefix else path


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def out_dim(module: nn.Module) -> int:
    """The weight dimension indexing a projection's outputs (1 for Conv1D, 0 for Linear)."""
    return 1 if is_conv1d(module) else 0


def out_features(module: nn.Module) -> int:
    return int(module.weight.shape[out_dim(module)])


def in_features(module: nn.Module) -> int:
    return int(module.weight.shape[1 - out_dim(module)])


def attribute(obj: object, path: str) -> object:
    """``obj.a.b`` for ``path`` ``"a.b"``, or None when any part is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _projection(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    m = modules.get(name)
    return m if isinstance(m, nn.Linear) or (m is not None and is_conv1d(m)) else None


def _counts(layout: AttentionLayout, modules: dict, name: str, d: int) -> tuple[int, int] | None:
    """(query heads, key-value heads) read off the weights, or None if they do not fit the layout."""
    o = _projection(modules, join(name, layout.o))
    if o is None or in_features(o) % d:
        return None
    heads = in_features(o) // d
    if layout.qkv:
        rows = out_features(modules[join(name, layout.qkv)])
        if layout.packing == "interleaved":
            return (heads, heads) if rows == 3 * heads * d else None
        extra = rows - heads * d
        return (heads, extra // (2 * d)) if extra > 0 and extra % (2 * d) == 0 else None
    k = modules[join(name, layout.k)]
    return (heads, out_features(k) // d) if out_features(k) % d == 0 else None


def _attention(modules: dict[str, nn.Module], name: str, m: nn.Module) -> AttentionSpec | None:
    for layout in ATTENTION_LAYOUTS:
        if not fnmatch.fnmatchcase(name, layout.named):
            continue
        if any(attribute(m, attr) != value for attr, value in layout.when):
            continue
        if any(_projection(modules, join(name, p)) is None for p in (*layout.projections, layout.o)):
            continue
        d = attribute(m, layout.head_dim)
        if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
            continue
        counts = _counts(layout, modules, name, d)
        shards = attribute(m, layout.shards) if layout.shards else 1
        if counts is None or not isinstance(shards, int) or isinstance(shards, bool) or shards <= 0:
            continue
        q, k, v = (join(name, layout.qkv),) * 3 if layout.qkv else (join(name, p) for p in layout.projections)
        o = join(name, layout.o)
        return AttentionSpec(name, layout.family, q, k, v, o, d, *counts, layout=layout, shards=shards)
    return None


def _layer_of(modules: dict[str, nn.Module], name: str) -> str:
    """The outermost ancestor of ``name`` that is an entry of a ModuleList (else its parent)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if isinstance(modules.get(".".join(parts[: i - 1]) if i > 1 else ""), nn.ModuleList):
            return ".".join(parts[:i])
    return name.rsplit(".", 1)[0] if "." in name else ""


def _ffn(modules: dict[str, nn.Module], container: str, attentions: list[str]) -> FFNSpec | None:
    for layout in FFN_LAYOUTS:
        projs = [_projection(modules, join(container, p)) for p in (*layout.ins, layout.out)]
        if any(p is None for p in projs):
            continue
        name = join(container, layout.name) if layout.name else container
        layer = name
        while layer and not any(a.startswith(layer + ".") for a in attentions):
            layer = layer.rsplit(".", 1)[0] if "." in layer else ""
        ins = tuple(join(container, p) for p in layout.ins)
        return FFNSpec(name, ins, join(container, layout.out), in_features(projs[-1]), layout, layer)
    return None


def find_blocks(model: nn.Module) -> tuple[list[AttentionSpec], list[FFNSpec]]:
    """All attention and feed-forward blocks, each list in model order."""
    modules = dict(model.named_modules())
    attentions: list[AttentionSpec] = []
    for name, m in modules.items():
        if any(name.startswith(a.name + ".") for a in attentions):
            continue  # inside an attention module already described
        spec = _attention(modules, name, m)
        if spec is not None:
            attentions.append(spec)
    names = [a.name for a in attentions]
    ffns: dict[str, FFNSpec] = {}
    for scope in dict.fromkeys(_layer_of(modules, a) for a in names):
        for container in modules:
            inside = container == scope or container.startswith(scope + ".") or not scope
            if (
                not inside
                or container in ffns
                or any(container.startswith(a + ".") or container == a for a in names)
            ):
                continue
            f = _ffn(modules, container, names)
            if f is not None and all(g.name != f.name for g in ffns.values()):
                ffns[container] = f
    order = {n: i for i, n in enumerate(modules)}
    return attentions, sorted(ffns.values(), key=lambda f: order[f.out])


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention module by its class name ("Attention" or "Attn", any case).

    The one name rule of prunekit: MAC counting uses it for modules of any style, and
    :func:`unrecognised_attention` for the modules that :func:`find_blocks` cannot describe."""
    kind = type(module).__name__.lower()
    return "attention" in kind or "attn" in kind


def unrecognised_attention(model: nn.Module, ignore: tuple[str, ...] = ()) -> str | None:
    """The first attention module of an HF model that no layout matches, or None.

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
