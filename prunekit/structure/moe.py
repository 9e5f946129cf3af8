"""Groups of mixture-of-experts feed-forward blocks (Mixtral, Qwen2-MoE, OLMoE, ... in transformers >= 5).

Two layouts are described, as data rather than traced (a router's top-k and per-expert indexing are
control flow that a trace cannot follow):

- Fused experts: one module holds ``gate_up_proj`` of shape (experts, 2 * width, hidden) and
  ``down_proj`` of shape (experts, hidden, width) (transposed when the module says ``is_transposed``),
  with gate and up concatenated ([gate; up]) or interleaved ([g0, u0, g1, u1, ...]) as its
  ``is_concatenated`` flag says. Every expert's weight is one slab of one tensor, which must stay
  rectangular, so neuron ``j`` is one unit across all experts: its gate and up rows in every expert
  and its down column in every expert. The router is untouched, so the prune is exact. A unit is a
  block of 16 bytes of neurons (4 in float32, 8 in bfloat16): transformers' default grouped-matmul
  experts kernel refuses other strides.
- Experts in a ModuleList (older layouts, custom models): each expert is its own FFN
  (``gate_proj/up_proj/down_proj`` or Mixtral's ``w1/w3/w2``), one group per expert, so experts may
  keep different widths.

A shared expert next to the routed ones (Qwen2-MoE ``shared_expert``) is an ordinary FFN group.

Experts as units: one more group per block, ``"{experts}:experts"`` (kind ``"expert"``), whose unit
``e`` is expert ``e`` whole (its slab of every fused weight, or every parameter of its module in a
ModuleList) together with row ``e`` of the router (a child in :data:`ROUTERS` with one weight row per
expert). Removing experts equals the dense model whose removed experts' router logits are -inf: the
softmax over the rest is the same, so are top-k and its renormalisation. ``min_units`` is the
router's top-k, so that k experts always remain. The option is off by default
(``find_groups(..., experts=True)``, ``prune.experts: true`` in a run config; ``apply_plan_`` turns
it on for a plan that names such a group): with it both kinds are offered (they overlap, as heads
and kv_heads do), and ``ignore: ["*experts*:neurons"]`` prunes whole experts only. Experts in a ModuleList are renumbered after a
prune, so their per-expert neuron groups of a later plan name the new positions.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from .group import ParamSlice

_FFN_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))
ROUTERS = ("gate", "router")  # the child of a block that scores the experts (one weight row each)
TOP_K = ("top_k", "num_experts_per_tok")  # attributes of the block or router holding k


def _router(block: nn.Module, count: int) -> tuple[str, nn.Module] | None:
    for name in ROUTERS:
        r = getattr(block, name, None)
        w = getattr(r, "weight", None)
        if isinstance(r, nn.Module) and isinstance(w, nn.Parameter) and w.dim() == 2 and w.shape[0] == count:
            return name, r
    return None


def _top_k(block: nn.Module, router: nn.Module) -> int:
    for owner in (block, router, getattr(block, "config", None)):
        for attr in TOP_K:
            k = getattr(owner, attr, None)
            if isinstance(k, int) and not isinstance(k, bool) and k > 0:
                return k
    return 1


def _experts(name: str, block: nn.Module) -> dict | None:
    """The experts of one block as units, with their router rows (see the module docstring)."""
    experts, path = block.experts, f"{name}.experts" if name else "experts"
    if isinstance(experts, nn.ModuleList):
        count = len(experts)
        slices = [
            ParamSlice(
                f"{path}.{e}.{p}", 0, tuple(tuple(range(t.shape[0])) if u == e else () for u in range(count))
            )
            for e, expert in enumerate(experts)
            for p, t in expert.named_parameters()
            if t.dim() > 0
        ]
    else:
        tensors = [(p, t) for p, t in experts.named_parameters(recurse=False) if t.dim() >= 2]
        count = tensors[0][1].shape[0] if tensors else 0
        if not tensors or any(t.shape[0] != count for _, t in tensors):
            return None  # not one slab per expert
        slices = [ParamSlice(f"{path}.{p}", 0, tuple((e,) for e in range(count))) for p, _ in tensors]
    found = _router(block, count) if count > 1 else None
    if found is None:
        return None  # no router row per expert: removing one would leave the router's choice dangling
    router_name, router = found
    where = f"{name}.{router_name}" if name else router_name
    rows = tuple((e,) for e in range(count))
    slices += [
        ParamSlice(f"{where}.{p}", 0, rows) for p, t in router.named_parameters() if t.shape[0] == count
    ]
    return dict(name=f"{path}:experts", kind="expert", layer=path, num_units=count, slices=tuple(slices),
                min_units=min(_top_k(block, router), count))  # fmt: skip


def _fused(name: str, m: nn.Module) -> dict | None:
    gate_up, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    if not (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter)):
        return None
    if gate_up.dim() != 3 or down.dim() != 3 or not getattr(m, "has_gate", True):
        return None
    transposed = bool(getattr(m, "is_transposed", False))
    up_dim, down_dim = (2, 1) if transposed else (1, 2)
    width = down.shape[down_dim]
    if gate_up.shape[up_dim] != 2 * width:
        return None
    # transformers' grouped-matmul kernels need 16-byte strides: a unit is that many neurons
    block = max(1, 16 // down.element_size())
    block = block if width % block == 0 else 1
    units = [tuple(range(u * block, (u + 1) * block)) for u in range(width // block)]
    if getattr(m, "is_concatenated", True):
        rows = [tuple(r for j in unit for r in (j, width + j)) for unit in units]
    else:
        rows = [tuple(r for j in unit for r in (2 * j, 2 * j + 1)) for unit in units]
    slices = [ParamSlice(f"{name}.gate_up_proj", up_dim, tuple(rows))]
    bias = getattr(m, "gate_up_proj_bias", None)
    if isinstance(bias, nn.Parameter) and bias.dim() == 2:
        slices.append(ParamSlice(f"{name}.gate_up_proj_bias", 1, tuple(rows)))
    slices.append(ParamSlice(f"{name}.down_proj", down_dim, tuple(units)))
    return dict(name=f"{name}:neurons", kind="neuron", layer=name, num_units=len(units), slices=tuple(slices))


def _ffn(name: str, m: nn.Module) -> dict | None:
    """A gated FFN module (one expert, or a shared expert) as one group of its neurons."""
    for gate, up, down in _FFN_NAMES:
        layers = [getattr(m, a, None) for a in (gate, up, down)]
        if not all(isinstance(layer, nn.Linear) for layer in layers):
            continue
        width = layers[2].in_features
        units = tuple((j,) for j in range(width))
        slices = [ParamSlice(f"{name}.{a}.weight", 0, units) for a in (gate, up)]
        slices += [
            ParamSlice(f"{name}.{a}.bias", 0, units)
            for a, lin in zip((gate, up), layers[:2], strict=True)
            if lin.bias is not None
        ]
        slices.append(ParamSlice(f"{name}.{down}.weight", 1, units))
        return dict(name=f"{name}:neurons", kind="neuron", layer=name, num_units=width, slices=tuple(slices))
    return None


def is_moe_block(module: nn.Module) -> bool:
    """A module that routes tokens to experts: it has an ``experts`` child."""
    return isinstance(getattr(module, "experts", None), nn.Module)


def moe_groups(model: nn.Module, known: Collection[str] = (), experts: bool = False) -> list[dict]:
    """Raw groups of every mixture-of-experts block, in model order (see the module docstring);
    groups named in ``known`` (a shared expert the FFN finder already grouped) are left out;
    ``experts``: also one group per block whose units are whole experts."""
    raw: list[dict] = []
    for name, block in model.named_modules():
        if not is_moe_block(block):
            continue
        path = f"{name}.experts" if name else "experts"
        fused = _fused(path, block.experts)
        if fused is not None:
            raw.append(fused)
        elif isinstance(block.experts, nn.ModuleList):
            raw += [g for i, e in enumerate(block.experts) if (g := _ffn(f"{path}.{i}", e)) is not None]
        if experts and (whole := _experts(name, block)) is not None:
            raw.append(whole)
        for child, module in block.named_children():
            if child != "experts" and "shared" in child and (g := _ffn(f"{name}.{child}", module)):
                raw.append(g)
    return [g for g in raw if g["name"] not in set(known)]
