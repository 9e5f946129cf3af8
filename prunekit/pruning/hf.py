"""After surgery on a transformer: re-derive module attributes and patch the HF config.

Attributes are recomputed from the pruned weights (idempotent, so rebuilding a checkpoint by applying
the same plan gives the same result), by the family layout (structure/layouts.py): head counts, key-
value group sizes, head widths, per-head module lists. The HF config can describe a pruned model only
when every layer of a kind has the same widths *and* the family reads those widths from the config:
LLaMA-style attention and T5 keep the head size explicit (``head_dim``, ``d_kv``), so the head counts
can change; BERT, GPT-2, GPT-NeoX, Falcon, OPT and BART derive the head size from ``hidden / heads``,
so their pruned heads cannot be expressed. The per-layer widths are therefore always recorded in
``config.prunekit_layer_widths``, and ``config.prunekit_config_exact`` says whether the class built
from the config alone has the pruned shapes (checked by building it on the meta device; when it is
False, loading the weights into a model built from the config fails on shape mismatch, loudly).
"""

from __future__ import annotations

import copy
import fnmatch

import torch
from torch import nn

from prunekit.structure.blocks import AttentionSpec, find_blocks, in_features, join
from prunekit.structure.layouts import Rules


def _configs(model: nn.Module) -> list:
    from transformers import PretrainedConfig

    seen, out = set(), []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if isinstance(cfg, PretrainedConfig) and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append(cfg)
    return out


def _own_configs(model: nn.Module) -> None:
    """Give ``model`` its own copies of its HF configs before they are patched.

    ``LlamaForCausalLM(cfg)`` keeps ``cfg`` itself (every submodule holding ``.config`` shares it),
    so patching it would change the caller's object and every model built from it afterwards. One
    deepcopy memo keeps the sharing between the model's own modules (and sub-configs) as it was."""
    from transformers import PretrainedConfig

    memo: dict = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if isinstance(cfg, PretrainedConfig):
            m.config = copy.deepcopy(cfg, memo)


def _set_ints(module: nn.Module, attrs: tuple[str, ...], value: int) -> None:
    for attr in attrs:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, value)


def _drop_cut_heads(model: nn.Module, a: AttentionSpec) -> None:
    """Per-head module lists (StableLM qk_layernorm): drop the modules whose parameters surgery cut
    to nothing, so that head ``i`` of the pruned projection meets the ``i``-th kept norm."""
    for e in a.layout.extras:
        full = join(a.name, e.path)
        try:
            listed = model.get_submodule(full)
        except AttributeError:
            continue
        if not e.per_module or not isinstance(listed, nn.ModuleList):
            continue
        kept = [
            m for m in listed if any(p.numel() for p in m.parameters()) or next(m.parameters(), None) is None
        ]
        if len(kept) < len(listed):
            parent_name, attr = full.rsplit(".", 1)
            parent = model.get_submodule(parent_name)
            parent._modules[attr] = nn.ModuleList(kept)
            _set_ints(parent, ("num_heads",), len(kept))


def _shared_table_owners(model: nn.Module, a: AttentionSpec) -> None:
    """A bias table above the attention module, shared by a stack (MPNet's encoder): the module that
    holds it also records the head count (``n_heads``); it follows the table's sliced width."""
    for e in a.layout.extras:
        if not e.path.startswith("../") or e.per_module:
            continue
        param_path = join(a.name, e.path)
        try:
            table = model.get_parameter(param_path)
        except AttributeError:
            continue
        table_module = param_path.rsplit(".", 1)[0]  # <owner>.<table module>.weight
        owner = table_module.rsplit(".", 1)[0] if "." in table_module else ""  # "": the model itself
        _set_ints(model.get_submodule(owner), a.layout.heads_attrs, int(table.shape[e.dim]))


def patch_attention(model: nn.Module, a: AttentionSpec) -> dict[str, int]:
    """Set one attention module's head-count attributes from its (pruned) weights; return them."""
    layout = a.layout
    module = model.get_submodule(a.name)
    holder = model.get_submodule(join(a.name, layout.counts_on)) if layout.counts_on else module
    heads, kv = a.num_heads, a.num_kv_heads
    _set_ints(holder, layout.heads_attrs, heads)
    _set_ints(holder, layout.kv_attrs, kv)
    _set_ints(holder, layout.groups_attrs, heads // max(kv, 1))  # read by repeat_kv at every forward
    _set_ints(holder, layout.width_attrs, heads * a.head_dim)
    _drop_cut_heads(model, a)
    _shared_table_owners(model, a)
    prefix = "cross_" if layout.role == "cross" else ""
    return {f"{prefix}heads": heads, f"{prefix}kv_heads": kv}


def _key(cfg, rules: Rules, name: str) -> str | None:
    return next((k for pattern, k in rules if fnmatch.fnmatchcase(name, pattern) and hasattr(cfg, k)), None)


def _config_values(
    cfg, attentions: list[AttentionSpec], ffns: list[tuple[str, int, Rules]]
) -> tuple[dict, bool]:
    """The config fields that express the pruned widths, and whether they can express all of them.
    Head fields are set all together or not at all (a config with new kv heads but old heads would
    describe neither model)."""
    heads: dict[str, set] = {}
    fixed: dict[str, set] = {}  # keys whose value must stay as it is (head size = hidden / heads)
    ffn: dict[str, set] = {}
    exact = True
    for a in attentions:
        lay = a.layout
        heads_key, kv_key = _key(cfg, lay.config_heads, a.name), _key(cfg, lay.config_kv, a.name)
        if heads_key is None:
            exact = False
        elif lay.config_head_dim:  # explicit head size: the counts can change
            heads.setdefault(lay.config_head_dim, set()).add(a.head_dim)
            heads.setdefault(heads_key, set()).add(a.num_heads)
            if kv_key is not None:
                heads.setdefault(kv_key, set()).add(a.num_kv_heads)
        else:
            fixed.setdefault(heads_key, set()).add(a.num_heads)
    for name, width, rules in ffns:
        key = _key(cfg, rules, name)
        if key is None:
            exact = False
        else:
            ffn.setdefault(key, set()).add(width)
    new = {k: v.pop() for k, v in ffn.items() if len(v) == 1}
    exact = exact and len(new) == len(ffn)
    if all(len(v) == 1 for v in heads.values()):
        new.update({k: next(iter(v)) for k, v in heads.items()})
    else:
        exact = False
    exact = exact and all(len(v) == 1 and getattr(cfg, k) in v for k, v in fixed.items())
    return new, exact


_EXPERT_CONFIG: Rules = (("*", "moe_intermediate_size"), ("*", "intermediate_size"))  # Qwen2-MoE; Mixtral


def _patch_fused_experts(model: nn.Module) -> list[tuple[str, int]]:
    """(name, width) of every fused-experts module (structure/moe.py: one weight of shape (experts,
    hidden, width) holds every expert's down projection), with its ``intermediate_dim`` set."""
    out = []
    for name, m in model.named_modules():
        down = getattr(m, "down_proj", None)
        if isinstance(down, nn.Parameter) and down.dim() == 3 and hasattr(m, "intermediate_dim"):
            width = int(down.shape[1] if getattr(m, "is_transposed", False) else down.shape[-1])
            m.intermediate_dim = width
            out.append((name, width))
    return out


_EXPERT_COUNT: Rules = (("*", "num_local_experts"), ("*", "num_experts"))  # Mixtral; Qwen2-MoE, OLMoE


def patch_experts(model: nn.Module) -> list[tuple[str, int]]:
    """(experts name, count) of every mixture-of-experts block after an expert prune (structure/moe.py):
    emptied expert modules leave their ModuleList, and the expert counts the forward reads (one-hot
    over ``num_experts``, the router's own count) follow the weights."""
    from prunekit.structure.moe import ROUTERS, is_moe_block

    out = []
    for name, block in list(model.named_modules()):
        if not is_moe_block(block):
            continue
        experts = block.experts
        if isinstance(experts, nn.ModuleList):
            kept = [
                m
                for m in experts
                if next(m.parameters(), None) is None or any(p.numel() for p in m.parameters())
            ]
            if len(kept) < len(experts):
                block._modules["experts"] = experts = nn.ModuleList(kept)
            count = len(kept)
        else:
            slabs = [t for t in experts.parameters(recurse=False) if t.dim() == 3]
            if not slabs:
                continue
            count = int(slabs[0].shape[0])
        for owner in (block, experts, *(getattr(block, r, None) for r in ROUTERS)):
            if isinstance(owner, nn.Module):
                _set_ints(owner, ("num_experts", "num_local_experts"), count)
        out.append((f"{name}.experts" if name else "experts", count))
    return out


def _rebuilds(model: nn.Module, cfg) -> bool:
    """Whether the model's class built from ``cfg`` alone has the model's parameter shapes."""
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(cfg))
    except Exception:
        return False
    shapes = {n: tuple(p.shape) for n, p in fresh.named_parameters()}
    return shapes == {n: tuple(p.shape) for n, p in model.named_parameters()}


def patch_transformer(model: nn.Module) -> dict[str, dict[str, int]]:
    """Fix attributes and configs after surgery; return {layer: widths}. No-op for other models."""
    experts = patch_experts(model)  # also models without attention (a custom MoE block)
    attentions, ffns = find_blocks(model)
    if not attentions:
        return {}
    widths: dict[str, dict[str, int]] = {}
    for a in attentions:
        widths.setdefault(a.name.rsplit(".", 1)[0], {}).update(patch_attention(model, a))
    ffn_widths = []
    for f in ffns:
        width = in_features(model.get_submodule(f.out))
        _set_ints(model.get_submodule(f.name), f.layout.width_attrs, width)
        widths.setdefault(f.layer or f.name.rsplit(".", 1)[0], {})["neurons"] = width
        ffn_widths.append((f.name, width, f.layout.config))
    for name, width in _patch_fused_experts(model):
        widths.setdefault(name.rsplit(".", 2)[0], {})["expert_neurons"] = width
        ffn_widths.append((name, width, _EXPERT_CONFIG))
    for name, count in experts:
        widths.setdefault(name.rsplit(".", 2)[0], {})["experts"] = count
        ffn_widths.append((name, count, _EXPERT_COUNT))

    _own_configs(model)  # the caller's config object (HF shares it) must never change
    top = getattr(model, "config", None)
    for cfg in _configs(model):
        new, exact = _config_values(cfg, attentions, ffn_widths)
        exact = _set_valid(cfg, new) and exact
        cfg.prunekit_layer_widths = widths
        cfg.prunekit_config_exact = exact
    if top is not None and hasattr(top, "to_dict"):
        exact = top.prunekit_config_exact and _rebuilds(model, top)
        for cfg in _configs(model):
            cfg.prunekit_config_exact = exact
    _per_layer_reads(model, attentions)
    return widths


def _per_layer_reads(model: nn.Module, attentions: list[AttentionSpec]) -> None:
    """A family whose forward reads a width from the config (Phi-3's query width) gets, in each layer
    the shared config cannot describe, its own copy of the config with that layer's value."""
    for a in attentions:
        module = model.get_submodule(a.name)
        cfg = getattr(module, "config", None)
        for key in a.layout.config_reads:
            if cfg is not None and getattr(cfg, key, None) != a.num_heads:
                cfg = copy.copy(cfg)
                setattr(cfg, key, a.num_heads)
                module.config = cfg


def _set_valid(cfg, new: dict) -> bool:
    """Set ``new`` on ``cfg`` if the config still validates (e.g. LLaMA wants hidden % heads == 0, even
    with an explicit head_dim); otherwise leave it unchanged (save_pretrained would fail) -> False."""
    old = {k: getattr(cfg, k, None) for k in new}
    for k, v in new.items():
        setattr(cfg, k, v)
    validate = getattr(cfg, "validate", None)
    try:
        if callable(validate):
            validate()
    except Exception:
        for k, v in old.items():
            setattr(cfg, k, v)
        return False
    return True
