"""After surgery on a transformer: re-derive module attributes and patch the HF config.

Attributes are recomputed from the pruned weights (idempotent, so rebuilding a checkpoint by applying
the same plan gives the same result). The HF config can describe a pruned model only when every layer
has the same widths *and* the family reads those widths from the config: LLaMA-style attention (and
ViT in transformers >= 5) keeps ``head_dim`` explicit, so ``num_attention_heads`` /
``num_key_value_heads`` can change; BERT derives its head size from ``hidden_size /
num_attention_heads`` (DistilBERT likewise from ``dim / n_heads``), so their pruned heads cannot be
expressed. The per-layer widths are therefore
always recorded in ``config.prunekit_layer_widths`` and ``config.prunekit_config_exact`` says whether
``from_pretrained`` on the config alone would rebuild the same shapes (when it is False, loading the
weights into a model built from the config fails on shape mismatch, loudly).
"""

from __future__ import annotations

from torch import nn

from prunekit.structure.blocks import AttentionSpec, find_blocks


def _patch_bert(model: nn.Module, a: AttentionSpec) -> dict[str, int]:
    sa = model.get_submodule(a.q.rsplit(".", 1)[0])
    rows = sa.query.out_features
    sa.num_attention_heads = rows // sa.attention_head_size
    sa.all_head_size = rows
    return {"heads": sa.num_attention_heads, "kv_heads": sa.num_attention_heads}


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
    import copy

    from transformers import PretrainedConfig

    memo: dict = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if isinstance(cfg, PretrainedConfig):
            m.config = copy.deepcopy(cfg, memo)


def _uniform(widths: dict[str, dict[str, int]], key: str) -> int | None:
    values = {w[key] for w in widths.values() if key in w}
    return values.pop() if len(values) == 1 else None


def patch_transformer(model: nn.Module) -> dict[str, dict[str, int]]:
    """Fix attributes and configs after surgery; return {layer: widths}. No-op for other models."""
    attentions, ffns = find_blocks(model)
    if not attentions:
        return {}
    widths: dict[str, dict[str, int]] = {}
    for a in attentions:
        layer = a.name.rsplit(".", 1)[0]
        got = _patch_bert(model, a) if a.style == "bert" else patch_qkvo(model, a)
        widths.setdefault(layer, {}).update(got)
    for f in ffns:
        width = model.get_submodule(f.out).in_features
        container = model.get_submodule(f.name)
        if hasattr(container, "intermediate_size"):
            container.intermediate_size = width
        widths.setdefault(f.name.rsplit(".", 1)[0], {})["neurons"] = width

    styles = {a.style for a in attentions}
    heads, kv, neurons = (_uniform(widths, k) for k in ("heads", "kv_heads", "neurons"))
    _own_configs(model)  # the caller's config object (HF shares it) must never change
    for cfg in _configs(model):
        exact, new = True, {}
        if styles == {"qkvo"} and heads is not None and kv is not None:
            new["head_dim"] = attentions[0].head_dim  # explicit, so hidden/heads is never used
            new["num_attention_heads"] = heads
            if hasattr(cfg, "num_key_value_heads"):
                new["num_key_value_heads"] = kv
        elif heads != getattr(cfg, "num_attention_heads", heads):
            exact = False  # BERT-style heads, or non-uniform heads: not expressible
        ffn_key = next((k for k in ("intermediate_size", "hidden_dim") if hasattr(cfg, k)), None)
        if neurons is not None and ffn_key is not None:  # hidden_dim: DistilBERT's FFN width
            new[ffn_key] = neurons
        elif any("neurons" in w for w in widths.values()):
            exact = False
        exact = _set_valid(cfg, new) and exact
        cfg.prunekit_layer_widths = widths
        cfg.prunekit_config_exact = exact
    return widths


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


def patch_qkvo(model: nn.Module, a: AttentionSpec) -> dict[str, int]:
    """Re-derive the head counts of one attention module from its (pruned) weights; return them."""
    module = model.get_submodule(a.name)
    q, k = model.get_submodule(a.q), model.get_submodule(a.k)
    heads, kv = q.out_features // a.head_dim, k.out_features // a.head_dim
    if hasattr(module, "num_key_value_groups"):
        module.num_key_value_groups = heads // max(kv, 1)  # read by repeat_kv at every forward
    for attr in ("num_heads", "num_attention_heads", "n_heads"):
        if hasattr(module, attr):
            setattr(module, attr, heads)
    if hasattr(module, "num_key_value_heads"):
        module.num_key_value_heads = kv
    return {"heads": heads, "kv_heads": kv}
