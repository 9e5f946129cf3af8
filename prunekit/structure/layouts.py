"""Attention and feed-forward layouts of transformer families, as data: one small entry per family.

A layout says where a family keeps the parts of a block, not how to cut them: which projections hold
the query, key and value heads (three modules, or one fused module and how its output rows are
packed), the output projection, the attribute holding the head size, parameters indexed by heads
(norms, relative-position bias tables), the module attributes that store head counts and the config
keys that express the widths. :mod:`prunekit.structure.heads` turns any layout into parameter slices
by index arithmetic, and :mod:`prunekit.pruning.hf` patches attributes and configs from it, so a new
family is a new entry here. Paths are relative to the attention module ("../x": to its parent).
Whether a projection's weight is ``(out, in)`` (``nn.Linear``) or ``(in, out)`` (transformers'
``Conv1D``, GPT-2) is read off the module's type, not stored.

Packings of a fused projection's output rows (``d`` = head size, ``H`` query heads, ``KV`` key-value
heads, ``r = H / KV``):

- ``"split"``: ``[q_0 .. q_H-1 | k_0 .. k_KV-1 | v_0 .. v_KV-1]`` (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``,
  Falcon multi-query with ``KV = 1``);
- ``"interleaved"``: ``[q_0 k_0 v_0 | q_1 k_1 v_1 | ...]`` (GPT-NeoX, Falcon-7B style; ``KV = H``);
- ``"grouped"``: ``[q_0 .. q_r-1 k_0 v_0 | q_r .. q_2r-1 k_1 v_1 | ...]`` (Falcon's new decoder
  architecture);
- ``"sharded"``: ``S`` model-parallel shards (the layout's ``shards`` attribute), each
  ``[q | v | k]`` of its ``H / S`` heads (CodeGen's ``qkv_proj``, ``mp_num = 4``; ``KV = H``). The
  forward splits the rows by ``S`` equal shards, so a unit is the ``j``-th head of *every* shard
  (heads.py) and a prune keeps the shards equal.
"""

from __future__ import annotations

from dataclasses import dataclass

Rules = tuple[tuple[str, str], ...]  # (fnmatch pattern on a module name, config key): first match wins


@dataclass(frozen=True)
class Extra:
    """A parameter (or a ModuleList of per-head modules) indexed by the query or key-value heads.

    Along ``dim`` it has one entry per head (a bias-table column, a ``(heads, head_dim)`` norm); of
    size ``head_dim`` it is shared by every head and stays whole; of size ``heads x head_dim`` it
    belongs to a norm over all heads' rows together (OLMo2, OLMoE, ESMC), and ``all_heads`` says what
    a head prune does to it: ``""`` heads not offered; ``"slice"`` its entries go with their heads (a
    bias); ``"rescale"`` they go with their heads and the kept ones are multiplied by
    sqrt(all / kept) (the norm's weight). An RMS norm then averages over the kept rows only, and the
    factor turns that back into the zero-masked dense model's average over all rows, up to its eps
    (effectively eps x kept / all). A mean-subtracting norm (LayerNorm) over the pruned rows cannot
    be made exact: the documented, approximate case (heads.py tells the two apart by probing the
    norm). Which case applies is read off the size. Missing paths are skipped."""

    path: str
    role: str = "q"  # "q": indexed by query heads, "kv": by key-value heads
    dim: int = 0
    per_module: bool = False  # a ModuleList with one module per head (StableLM qk_layernorm)
    all_heads: str = ""  # a norm over all heads together: "" (refuse) | "slice" | "rescale"
    # the output rows (weight) or entries (bias) of a projection of heads x head_dim, sliced like the
    # query rows (DeBERTa's pos_key_proj / pos_query_proj): no statistic over heads, always exact
    rows: bool = False


@dataclass(frozen=True)
class AttentionLayout:
    family: str
    o: str  # output projection (its input columns are the query heads)
    head_dim: str  # attribute path holding the head size
    q: str = ""  # separate projections ...
    k: str = ""
    v: str = ""
    qkv: str = ""  # ... or one fused projection
    packing: str = "separate"  # "separate" | "split" | "interleaved" | "grouped" | "sharded"
    shards: str = ""  # "sharded": the attribute holding the shard count (CodeGen's mp_num)
    when: tuple[tuple[str, object], ...] = ()  # attribute values the module must have
    named: str = "*"  # fnmatch pattern the module's name must match
    gqa: str = ""  # an attribute whose presence means query heads and key-value heads are grouped
    extras: tuple[Extra, ...] = ()
    stack: str = ""  # regex: layers whose names differ only there share one group (T5's shared bias)
    blocked_by: tuple[tuple[str, object], ...] = ()  # attribute values under which heads cannot be cut
    role: str = "self"  # "self" | "cross": widths are recorded as "heads" or "cross_heads"
    counts_on: str = ""  # the child holding the head-count attributes ("" = the module itself)
    heads_attrs: tuple[str, ...] = ("num_heads", "num_attention_heads", "n_heads", "n_head")
    kv_attrs: tuple[str, ...] = ("num_key_value_heads", "num_kv_heads")
    groups_attrs: tuple[str, ...] = ("num_key_value_groups",)  # query heads per key-value head
    width_attrs: tuple[str, ...] = ("all_head_size", "inner_dim", "split_size")  # heads x head size
    config_heads: Rules = (("*", "num_attention_heads"),)
    config_kv: Rules = ()
    config_head_dim: str = ""  # config key of an explicit head size ("": head size = hidden / heads)
    config_reads: tuple[str, ...] = ()  # config keys the forward reads (Phi-3): per-layer copies if needed
    independent: tuple[str, ...] = ()  # children whose parameters do not depend on the heads (ALBERT's norm)
    # forward keyword of the ALiBi bias the model builds for all its heads: a pruned layer gets the
    # rows of its kept heads (pruning/alibi.py), each head keeping its own slope; alibi_dim is where
    # the heads are, 0: folded into the batch, (batch x heads, ...) (Bloom); 1: (batch, heads, ...)
    alibi: str = ""
    alibi_dim: int = 0

    @property
    def projections(self) -> tuple[str, ...]:
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)


@dataclass(frozen=True)
class FFNLayout:
    family: str
    ins: tuple[str, ...]  # projections whose output rows are the neurons (gate and up, fc1)
    out: str  # projection whose input columns are the neurons
    fused: bool = False  # ins[0] holds [gate | up] rows: neuron i is rows i and width + i (Phi-3)
    name: str = ""  # group name relative to the container ("" = the container itself)
    width_attrs: tuple[str, ...] = ("intermediate_size",)
    config: Rules = (("*", "intermediate_size"),)


_NORMS = (  # per-head norms and position-bias tables of the q_proj/k_proj/v_proj/o_proj families
    Extra("q_layernorm.norms", "q", per_module=True),  # StableLM qk_layernorm: one LayerNorm per head
    Extra("k_layernorm.norms", "kv", per_module=True),
    # OLMo2, OLMoE: an RMSNorm over all heads; ESMC: a LayerNorm over all heads; Cohere: (heads,
    # head_dim); Qwen3: shared by every head
    Extra("q_norm.weight", "q", all_heads="rescale"),
    Extra("q_norm.bias", "q", all_heads="slice"),
    Extra("k_norm.weight", "kv", all_heads="rescale"),
    Extra("k_norm.bias", "kv", all_heads="slice"),
    Extra("relative_position_bias.relative_position_bias_table", "q", dim=1),  # Swin
    Extra("../relative_position_bias.relative_position_bias_table", "q", dim=1),  # BEiT
)
_DEBERTA_POS = tuple(  # share_att_key false: c2p's pos_key_proj, p2c's pos_query_proj
    Extra(f"pos_{kind}_proj.{p}", "q" if kind == "query" else "kv", rows=True)
    for kind in ("key", "query")
    for p in ("weight", "bias")
)
_LLAMA_CONFIG = dict(
    config_kv=(("*", "num_key_value_heads"),), config_head_dim="head_dim", gqa="num_key_value_groups"
)
_BART_HEADS = (
    ("*encoder_attn", "decoder_attention_heads"),
    ("*encoder*", "encoder_attention_heads"),
    ("*decoder*", "decoder_attention_heads"),
)
_BART = dict(  # XGLM reshapes by embed_dim (the attention width)
    q="q_proj", k="k_proj", v="v_proj", o="out_proj", head_dim="head_dim", config_heads=_BART_HEADS,
    width_attrs=("embed_dim",),
)  # fmt: skip
_SELF = (("is_cross_attention", False),)
_BIGCODE = dict(  # splits c_attn's output by (embed_dim, kv_dim, kv_dim)
    qkv="c_attn", o="c_proj", head_dim="head_dim", kv_attrs=("kv_heads",), width_attrs=("embed_dim",)
)
_T5 = dict(q="q", k="k", v="v", o="o", head_dim="key_value_proj_dim", stack=r"\.block\.\d+\.")
_T5_CONFIG = dict(config_heads=(("*", "num_heads"),), config_head_dim="d_kv")
_FALCON = dict(  # with ALiBi the bias arrives in the mask, one row per head (1 row without ALiBi)
    qkv="query_key_value", o="dense", head_dim="head_dim", config_kv=(("*", "num_kv_heads"),),
    alibi="attention_mask", alibi_dim=1,
)  # fmt: skip

_SHARED = (("config.use_shared_relative_position_bias", True),)
_D2V_TABLE = (Extra("attention.relative_position_bias.relative_position_bias_table", "q", dim=1),)
_D2V_SHARED = Extra("../../../relative_position_bias.relative_position_bias_table", "q", dim=1)

ATTENTION_LAYOUTS: tuple[AttentionLayout, ...] = (
    # LLaMA, Mistral, Qwen2/3, StableLM, OLMo2, Cohere; ViT, Swin, BEiT (transformers >= 5)
    # BEiT with one bias table on the encoder, added in every layer: one head group per stack (as T5)
    AttentionLayout("beit_shared", q="q_proj", k="k_proj", v="v_proj", o="o_proj", head_dim="head_dim",
                    when=_SHARED, stack=r"\.layers\.\d+\.", **_LLAMA_CONFIG,
                    extras=(*_NORMS, Extra("../../../shared_position_bias.relative_position_bias_table", "q", dim=1))),
    AttentionLayout("llama", q="q_proj", k="k_proj", v="v_proj", o="o_proj", head_dim="head_dim",
                    extras=_NORMS, **_LLAMA_CONFIG),
    AttentionLayout("phi", q="q_proj", k="k_proj", v="v_proj", o="dense", head_dim="head_dim",
                    extras=_NORMS, **_LLAMA_CONFIG),
    AttentionLayout("phi3", qkv="qkv_proj", packing="split", o="o_proj", head_dim="head_dim",
                    config_reads=("num_attention_heads",), **_LLAMA_CONFIG),
    AttentionLayout("bart", named="*encoder_attn", role="cross", **_BART),
    AttentionLayout("bart", **_BART),  # OPT, BioGPT, XGLM, mBART, Pegasus, GPT-J
    AttentionLayout("distilbert", q="q_lin", k="k_lin", v="v_lin", o="out_lin",
                    head_dim="attention_head_size", config_heads=(("*", "n_heads"),)),
    AttentionLayout("bert", q="self.query", k="self.key", v="self.value", o="output.dense",
                    head_dim="self.attention_head_size", counts_on="self"),
    # Data2Vec-Vision (BEiT's older code) with its encoder's shared bias table: one group per stack
    AttentionLayout("bert", q="attention.query", k="attention.key", v="attention.value",
                    o="output.dense", head_dim="attention.attention_head_size", counts_on="attention",
                    when=(("attention.config.use_shared_relative_position_bias", True),),
                    stack=r"\.layer\.\d+\.", extras=(*_D2V_TABLE, _D2V_SHARED)),
    AttentionLayout("bert", q="attention.query", k="attention.key", v="attention.value",
                    o="output.dense", head_dim="attention.attention_head_size", counts_on="attention",
                    extras=_D2V_TABLE),
    AttentionLayout("gpt_bigcode", packing="split", gqa="kv_heads", when=(("multi_query", True), *_SELF),
                    **_BIGCODE),
    AttentionLayout("gpt_bigcode", packing="interleaved", when=(("multi_query", False), *_SELF), **_BIGCODE),
    AttentionLayout("gpt2", qkv="c_attn", packing="split", o="c_proj", head_dim="head_dim", when=_SELF),
    AttentionLayout("gpt_neox", qkv="query_key_value", packing="interleaved", o="dense",
                    head_dim="head_size"),
    # Persimmon: matched by its qk_layernorm flag (either value), so that Bloom (ALiBi) is not
    AttentionLayout("persimmon", qkv="query_key_value", packing="interleaved", o="dense", head_dim="head_dim",
                    when=(("qk_layernorm", True),)),
    AttentionLayout("persimmon", qkv="query_key_value", packing="interleaved", o="dense", head_dim="head_dim",
                    when=(("qk_layernorm", False),)),
    # Bloom: per head [q k v] rows; ALiBi slopes set by the model's head count, so sliced per layer
    AttentionLayout("bloom", qkv="query_key_value", packing="interleaved", o="dense", head_dim="head_dim",
                    when=(("slow_but_exact", False),), alibi="alibi"),
    AttentionLayout("albert", q="query", k="key", v="value", o="dense", head_dim="attention_head_size",
                    independent=("LayerNorm",)),
    # grouped: a unit of :heads is a query slot of every key-value group, not one head; with ALiBi a
    # pruned layer's kept heads (and slopes) are derived from the units (pruning/alibi.kept_heads)
    AttentionLayout("falcon", packing="grouped", gqa="num_kv_heads",
                    when=(("new_decoder_architecture", True),), **_FALCON),
    AttentionLayout("falcon", packing="split", gqa="num_kv_heads", when=(("multi_query", True),), **_FALCON),
    AttentionLayout("falcon", packing="interleaved",
                    when=(("new_decoder_architecture", False), ("multi_query", False)), **_FALCON),
    AttentionLayout("t5", named="*EncDecAttention", role="cross", **_T5, **_T5_CONFIG),
    AttentionLayout("t5", extras=(Extra("relative_attention_bias.weight", "q", dim=1),), **_T5, **_T5_CONFIG),
    # DeBERTa-v2/v3: the relative-position terms are per head, projected by query_proj / key_proj
    # (share_att_key) or by their own pos_*_proj (rows: heads x head_dim); the scale reads the head
    # size only. Not in config.json: its output.dense is built hidden x hidden whatever the heads.
    # Matched on the inner DisentangledSelfAttention, the module whose matmuls macs.py counts, so
    # that they scale with the pruned heads (the output projection is one level up)
    AttentionLayout("deberta_v2", q="query_proj", k="key_proj", v="value_proj", o="../output.dense",
                    head_dim="attention_head_size", extras=_DEBERTA_POS),
    # MPNet: one relative_attention_bias (buckets, heads) on the encoder, added in every layer: one
    # head group per stack, as T5
    AttentionLayout("mpnet", q="attn.q", k="attn.k", v="attn.v", o="attn.o",
                    head_dim="attn.attention_head_size", counts_on="attn", stack=r"\.layer\.\d+\.",
                    extras=(Extra("../../../relative_attention_bias.weight", "q", dim=1),)),
    # CodeGen: forward splits qkv_proj by embed_dim // mp_num, so embed_dim is the attention width
    AttentionLayout("codegen", qkv="qkv_proj", packing="sharded", shards="mp_num", o="out_proj",
                    head_dim="head_dim", width_attrs=("embed_dim",)),
)  # fmt: skip

# PyTorch's nn.MultiheadAttention: its q/k/v projections are parameters of the module itself, not
# child modules, so find_blocks never matches these; structure/mha.py describes every
# nn.MultiheadAttention with them. Either form keeps one [q | k | v] in_proj_bias (split packing, as
# the packed weight) and, with add_bias_kv, bias_k / bias_v of (1, 1, heads x head_dim), both sliced
# with the heads by mha.py.
TORCH_MHA_LAYOUTS: tuple[AttentionLayout, ...] = (
    AttentionLayout("torch_mha", qkv="in_proj_weight", packing="split", o="out_proj", head_dim="head_dim",
                    when=(("_qkv_same_embed_dim", True),)),
    AttentionLayout("torch_mha", q="q_proj_weight", k="k_proj_weight", v="v_proj_weight", o="out_proj",
                    head_dim="head_dim", when=(("_qkv_same_embed_dim", False),)),
)  # fmt: skip

_GATED = (  # Qwen2-MoE: a shared expert, experts in a ModuleList (older layouts), dense layers
    ("*shared_expert", "shared_expert_intermediate_size"),
    ("*.experts.*", "moe_intermediate_size"),
    ("*", "intermediate_size"),
)
_BART_FFN = (("*encoder*", "encoder_ffn_dim"), ("*decoder*", "decoder_ffn_dim"), ("*", "ffn_dim"))
FFN_LAYOUTS: tuple[FFNLayout, ...] = (
    FFNLayout("llama", ("gate_proj", "up_proj"), "down_proj", config=_GATED),
    FFNLayout("phi3", ("gate_up_proj",), "down_proj", fused=True),
    FFNLayout("fc", ("fc1",), "fc2", config=(("*", "intermediate_size"), *_BART_FFN)),  # Phi, OPT, BART, ViT
    FFNLayout("distilbert", ("lin1",), "lin2", config=(("*", "hidden_dim"),)),
    FFNLayout("bert", ("intermediate.dense",), "output.dense", name="intermediate"),
    FFNLayout("gpt2", ("c_fc",), "c_proj", config=(("*", "n_inner"),)),  # GPT-BigCode too
    FFNLayout("gptj", ("fc_in",), "fc_out", config=(("*", "n_inner"),)),
    FFNLayout("albert", ("ffn",), "ffn_output"),
    FFNLayout("wav2vec2", ("intermediate_dense",), "output_dense"),
    FFNLayout("gpt_neox", ("dense_h_to_4h",), "dense_4h_to_h",
              config=(("*", "ffn_hidden_size"), ("*", "intermediate_size"))),
    FFNLayout("t5", ("wi_0", "wi_1"), "wo", config=(("*", "d_ff"),)),
    FFNLayout("t5", ("wi",), "wo", config=(("*", "d_ff"),)),
)  # fmt: skip
