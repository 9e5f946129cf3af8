"""The coverage matrix (issue 12): architectures and patterns, and the check each one goes through.

A case is one line of :data:`CASES`: a name, a builder of ``(model, example_inputs)`` and what is
expected (the group kinds found, or the start of a one-line refusal). :func:`check` finds the
groups, prunes 30 % and 50 % of the units of every group at random and compares every output with
the dense model whose removed units are zeroed (an independent reference, norms and BatchNorm
randomised by the builders), saves and reloads the pruned model (bit-identical) and, for HF models,
tries ``from_pretrained``. Used by tests/test_coverage_matrix.py and experiments/coverage.py
(importable as ``coverage_cases`` because tests/conftest.py puts this folder on ``sys.path``).
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.structure import Plan, find_groups
from prunekit.structure.moe import ROUTERS
from prunekit.testing.hf_tiny import BUILDERS
from prunekit.testing.patterns import PATTERNS, pattern_factory
from prunekit.testing.reference import randomise_norms, zero_masked

FRACTIONS = (0.3, 0.5)
EXACT_TOL = 1e-5  # float32 sums in another order; a unit given to the wrong place is >= 1e-2


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., tuple[nn.Module, Any]]
    kinds: frozenset[str] = frozenset()  # group kinds find_groups must offer
    refusal: str | None = None  # or: find_groups refuses with a message starting so
    hf: bool = True
    extra: dict = field(default_factory=dict)  # "find": keyword arguments of find_groups
    # the one documented, expected difference (issue 12): a norm over all heads together, whose
    # statistics a head prune changes; such a case alone is checked against its own tolerance
    documented: str = ""
    tol: float = EXACT_TOL


def _auto(auto: str, inputs: str, **fields: Any) -> Callable[..., tuple[nn.Module, Any]]:
    """A builder from ``AutoConfig.for_model(**fields)`` + ``auto.from_config`` (eager, norms randomised)."""

    def build(seed: int = 0) -> tuple[nn.Module, Any]:
        import transformers

        torch.manual_seed(seed)
        cfg = transformers.AutoConfig.for_model(**fields)
        model = getattr(transformers, auto).from_config(cfg, attn_implementation="eager")
        g = torch.Generator().manual_seed(seed)
        if inputs == "pixels":
            x = {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
        else:
            x = {"input_ids": torch.randint(1, 64, (2, 7), generator=g)}
        return randomise_norms(model.eval(), seed), x

    return build


def _sdpa(name: str) -> Callable[..., tuple[nn.Module, Any]]:
    """H6's builder, rebuilt with the default ``sdpa`` attention (a checkpoint must record it)."""

    def build(seed: int = 0) -> tuple[nn.Module, Any]:
        model, x = BUILDERS[name](seed=seed)
        fresh = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="sdpa")
        fresh.load_state_dict(model.state_dict())
        return fresh.eval(), x

    return build


_DEC = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
_DEC |= dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
_ENC = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
_FALCON = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
_LM = "AutoModelForCausalLM"
_CLS = "AutoModelForSequenceClassification"
_MLM = "AutoModelForMaskedLM"
_EPS0 = dict(rms_norm_eps=1e-12)  # isolates the surgery from the eps effect (measured with "olmo2")
_EPS = "RMSNorm over all heads: eps acts as eps x kept / all"
_MEAN = "LayerNorm over all heads: its mean and variance change"
HEADS = frozenset({"head", "neuron"})
GQA = frozenset({"head", "kv_head", "neuron"})
FFN = frozenset({"neuron"})
CHANNELS = frozenset({"channel"})


EXPERTS = GQA | {"expert"}
_WHOLE = {"find": {"experts": True}}
_MIXTRAL = _auto(_LM, "ids", model_type="mixtral", num_local_experts=4, num_experts_per_tok=2,
                 **_DEC | {"intermediate_size": 24, "num_key_value_heads": 2})  # fmt: skip
_QWEN2_MOE = _auto(_LM, "ids", model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                   shared_expert_intermediate_size=24, decoder_sparse_step=1, **_DEC | {"num_key_value_heads": 2})  # fmt: skip
_OLMOE = _auto(_LM, "ids", model_type="olmoe", num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
               **_EPS0 | _DEC | {"intermediate_size": 16})  # fmt: skip


def _h6(name: str, kinds: frozenset[str] = frozenset(), refusal: str | None = None) -> Case:
    return Case(name, BUILDERS[name], kinds, refusal)


def _pattern(name: str, kinds: frozenset[str] = frozenset(), refusal: str | None = None) -> Case:
    return Case(name, PATTERNS[name], kinds, refusal, hf=False)


# One line per architecture. kinds: what find_groups offers today (a family that grows head groups
# only needs its line changed); refusal: the one-line message it gives instead.
CASES: list[Case] = [
    _h6("llama", GQA),
    _h6("mistral", GQA),
    _h6("qwen2", GQA),
    _h6("stablelm", GQA),
    _h6("stablelm_qknorm", GQA),  # per-head q/k LayerNorms, sliced with their heads
    # q/k RMSNorm over all heads: kept weights x sqrt(all / kept), exact but for eps (eps x kept / all),
    # which dominates here (mean q^2 ~ 5e-6 < eps 1e-5 at the tiny model's init); eps 1e-12: exact
    Case("olmo2", BUILDERS["olmo2"], GQA, documented=_EPS, tol=0.25),
    Case("olmo2_eps0", _auto(_LM, "ids", model_type="olmo2", num_key_value_heads=4, **_EPS0 | _DEC), GQA),
    Case("olmo2_gqa", _auto(_LM, "ids", model_type="olmo2", num_key_value_heads=2, **_EPS0 | _DEC), GQA),
    Case("olmoe", _OLMOE, GQA),  # q/k RMSNorm over all heads (eps 1e-12) + fused experts
    Case("esmc", _auto(_MLM, "ids", model_type="esmc", **_DEC), GQA, documented=_MEAN, tol=0.25),
    _h6("cohere_qknorm", GQA),
    _h6("bert", HEADS),
    _h6("roberta", HEADS),
    _h6("distilbert", HEADS),
    _h6("vit", HEADS),
    _h6("swin", HEADS),  # relative-position bias tables, one column per head
    _h6("beit", HEADS),
    _h6("beit_shared", HEADS),  # one encoder bias table read by every layer: one head group per stack
    # BEiT's older code (query / key / value modules): the encoder's shared table and one per layer
    Case("data2vec_vision", partial(BUILDERS["beit"], shared=True, config="Data2VecVisionConfig"), HEADS),
    _h6("gpt2", HEADS),  # Conv1D, fused c_attn
    _h6("gpt_neox", HEADS),  # fused, interleaved qkv
    _h6("falcon", GQA),  # multi-query, parallel attention
    _h6("falcon_gqa", GQA),
    # ALiBi: slopes set by the model's head count, each pruned layer adds its kept heads' rows
    Case("bloom", _auto(_LM, "ids", model_type="bloom", vocab_size=64, hidden_size=32, n_layer=2, n_head=4), HEADS),
    Case("falcon_alibi", _auto(_LM, "ids", model_type="falcon", alibi=True, multi_query=False, **_FALCON), HEADS),
    Case("falcon_alibi_mq", _auto(_LM, "ids", model_type="falcon", alibi=True, multi_query=True, **_FALCON), GQA),
    # grouped decoder: a :heads unit is slot j of every key-value group; the kept heads follow from the units
    Case("falcon_alibi_grouped", _auto(_LM, "ids", model_type="falcon", alibi=True, new_decoder_architecture=True,
                                       num_kv_heads=2, **_FALCON), GQA),
    _h6("phi", GQA),
    _h6("phi3", GQA),  # fused qkv_proj and gate_up_proj
    _h6("opt", HEADS),
    _h6("bart", HEADS),  # encoder-decoder, cross-attention
    _h6("t5", HEADS),  # relative attention bias
    _h6("t5_gated", HEADS),
    _h6("mt5", HEADS),
    _h6("mbart", HEADS),
    _h6("marian", HEADS),
    _h6("pegasus", HEADS),
    _h6("biogpt", HEADS),
    _h6("xglm", HEADS),
    _h6("gptj", HEADS),
    _h6("gpt_bigcode", GQA),  # multi-query, fused c_attn
    _h6("starcoder2", GQA),
    _h6("gemma2", GQA),
    _h6("deit", HEADS),  # its auto class maps to two classes: the checkpoint records which
    _h6("dinov2", HEADS),
    _h6("clip", HEADS),
    _h6("siglip", HEADS),
    _h6("whisper", HEADS),  # AutoModelForSpeechSeq2Seq
    _h6("wav2vec2", HEADS),
    _h6("albert", HEADS),  # factorised embeddings, layers sharing weights
    _h6("persimmon", HEADS),  # fused qkv, q/k LayerNorms over head_dim
    _h6("deberta_v2", HEADS),  # disentangled relative attention through query_proj / key_proj
    _h6("deberta_v2_pos", HEADS),  # share_att_key false: pos_key_proj / pos_query_proj rows sliced too
    _h6("mpnet", HEADS),  # one encoder bias table read by every layer: one head group per stack
    _h6("codegen", HEADS),  # fused qkv_proj in 4 shards: a unit is one slot of every shard
    Case("llama_sdpa", _sdpa("llama"), GQA),
    Case("bert_sdpa", _sdpa("bert"), HEADS),
    Case("gemma", _auto(_LM, "ids", model_type="gemma", head_dim=8, num_key_value_heads=2, **_DEC), GQA),
    Case("qwen3", _auto(_LM, "ids", model_type="qwen3", head_dim=8, num_key_value_heads=2, **_DEC), GQA),
    Case("granite", _auto(_LM, "ids", model_type="granite", num_key_value_heads=2, **_DEC), GQA),
    Case("olmo", _auto(_LM, "ids", model_type="olmo", num_key_value_heads=4, **_DEC), GQA),
    Case("mixtral", _MIXTRAL, GQA),  # fused experts
    Case("qwen2_moe", _QWEN2_MOE, GQA),  # + a shared expert
    # whole experts as units with their router rows (find_groups(..., experts=True), structure/moe.py)
    Case("mixtral_experts", _MIXTRAL, EXPERTS, extra=_WHOLE),
    Case("qwen2_moe_experts", _QWEN2_MOE, EXPERTS, extra=_WHOLE),
    Case("olmoe_experts", _OLMOE, EXPERTS, extra=_WHOLE),
    Case("electra", _auto(_CLS, "ids", model_type="electra", embedding_size=32, **_ENC), HEADS),
    Case("xlm_roberta", _auto(_CLS, "ids", model_type="xlm-roberta", max_position_embeddings=40, **_ENC), HEADS),
    _pattern("split_outputs", CHANNELS),
    _pattern("dict_outputs", FFN),
    _pattern("reshape_channels", frozenset({"neuron", "channel"})),
    _pattern("lstm", FFN),
    _pattern("lstm_2layer", FFN),
    _pattern("gru", FFN),
    _pattern("gru_2layer", FFN),
    _pattern("rnn_2layer", FFN),
    _pattern("resnext", CHANNELS),
    _pattern("concat_split", CHANNELS),
    _pattern("transposed_conv", CHANNELS),
    _pattern("grouped_transposed", refusal="group stem:out couples to grouped (grouped transposed conv"),
    # nn.MultiheadAttention heads (structure/mha.py) and FFN; the stream, the attentions' embed_dim, is refused
    Case("torch_transformer", PATTERNS["torch_transformer"], HEADS, hf=False, extra={"find": {"ignore": ["embed"]}}),
    Case("torch_decoder", PATTERNS["torch_decoder"], HEADS, hf=False, extra={"find": {"ignore": ["embed", "memory"]}}),
    _pattern("plain_attention", refusal="group qkv:out couples to qkv (its output features are reshaped"),
]  # fmt: skip
BY_NAME = {c.name: c for c in CASES}


def outputs(model: nn.Module, x: Any) -> list[Tensor]:
    """Every tensor the model returns (HF: the logits)."""
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    if hasattr(out, "logits"):
        return [out.logits]
    found, stack = [], [out]
    while stack:
        o = stack.pop(0)
        if isinstance(o, Tensor):
            found.append(o)
        elif isinstance(o, (tuple, list)):
            stack[:0] = list(o)
        elif isinstance(o, dict):
            stack[:0] = list(o.values())
    return found


def rel_err(a: list[Tensor], b: list[Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max(((x - y).norm() / y.norm().clamp_min(1e-12)).item() for x, y in zip(a, b, strict=True))


class _MinusInfRows(torch.Tensor):
    """A router weight whose removed experts' logits are -inf (``F.linear`` on it): the reference for
    removed experts, independent of prunekit's surgery and of each family's softmax / top-k code."""

    removed: list[int]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear and len(args) > 1 and isinstance(args[1], _MinusInfRows):
            removed = args[1].removed
            plain = [a.as_subclass(Tensor) if isinstance(a, Tensor) else a for a in args]
            out = torch.nn.functional.linear(*plain, **kwargs)
            out[..., removed] = float("-inf")
            return out
        return super().__torch_function__(func, types, args, kwargs)


def reference(model: nn.Module, groups, keep) -> nn.Module:
    """The dense model with the removed units zeroed (reference.zero_masked) and, for removed experts,
    their router logits forced to -inf (a zeroed router row would still give them logit 0)."""
    dense = zero_masked(model, groups, keep)
    for g in groups:
        if g.kind != "expert" or g.name not in keep:
            continue
        removed = [u for u in range(g.num_units) if u not in set(keep[g.name])]
        for s in g.slices:
            owner, attr = s.param.rsplit(".", 1)
            if owner.rsplit(".", 1)[-1] in ROUTERS and attr == "weight" and removed:
                router = dense.get_submodule(owner)
                w = router._parameters.pop("weight").detach().as_subclass(_MinusInfRows)
                w.removed = removed
                router.weight = w
    return dense


def random_plan(groups, fraction: float, seed: int) -> Plan:
    """Keep ``1 - fraction`` of each group's units (at least one), chosen at random; groups of one
    size keep one count, so a uniform HF prune stays expressible in config.json."""
    rng = random.Random(seed)
    keep = {}
    for g in groups:
        count = max(g.min_units, round(g.num_units * (1 - fraction)))
        keep[g.name] = sorted(rng.sample(range(g.num_units), min(count, g.num_units)))
    return Plan(keep=keep, num_units={g.name: g.num_units for g in groups})


def _base(case: Case, model: nn.Module, x: Any) -> dict[str, Any]:
    """The reference prunekit.load rebuilds the base model from (taken before any prune)."""
    from prunekit.config import ModelConfig
    from prunekit.models.registry import describe, register_model, registered_models

    if case.hf:
        cfg = copy.deepcopy(model.config).to_dict()
        return {"format": 1, "name": "hf", "kwargs": {}, "num_classes": int(model.config.num_labels),
                "input_shape": [1], "path": None, "trust_remote_code": False, "hf_config": cfg}  # fmt: skip
    reg = f"pattern_{case.name}"
    if reg not in registered_models():
        register_model(reg, pattern_factory(case.name))
    return describe(ModelConfig(name=reg), num_classes=1, input_shape=tuple(x.shape[1:]))


def _reload(case: Case, model: nn.Module, plan: Plan, base: dict, x: Any, folder: Path) -> dict:
    from prunekit.pruning import load, save

    save(model, folder, plan, None, base, x)
    loaded, meta = load(folder)
    mine, theirs = model.state_dict(), loaded.state_dict()
    same_state = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    same_out = all(torch.equal(a, b) for a, b in zip(outputs(model, x), outputs(loaded, x), strict=True))
    result = {"reload": bool(same_state and same_out and type(loaded) is type(model)),
              "reload_class": type(loaded).__name__, "from_pretrained": None}  # fmt: skip
    if case.hf:
        expressible = bool(meta.get("hf_from_pretrained"))
        try:
            impl = model.config._attn_implementation  # sdpa and eager differ by ~1e-7
            fp = type(model).from_pretrained(folder, attn_implementation=impl).eval()
            ok = all(torch.equal(a, b) for a, b in zip(outputs(model, x), outputs(fp, x), strict=True))
            result["from_pretrained"] = (
                "exact" if ok and expressible else f"WRONG (expressible={expressible})"
            )
        except Exception as err:  # a config that cannot express the prune must refuse loudly
            result["from_pretrained"] = "refused" if not expressible else f"FAILED ({type(err).__name__})"
    return result


def check(case: Case, seed: int = 0, fractions: tuple[float, ...] = FRACTIONS) -> dict[str, Any]:
    """Everything the matrix reports about one case (see the module docstring)."""
    model, x = case.build(seed=seed)
    start = time.perf_counter()
    try:
        groups = find_groups(model, x, **case.extra.get("find", {}))
    except ValueError as err:
        return {"name": case.name, "refused": str(err), "find_s": time.perf_counter() - start}
    out: dict[str, Any] = {
        "name": case.name,
        "refused": None,
        "find_s": time.perf_counter() - start,
        "groups": len(groups),
        "kinds": sorted({g.kind for g in groups}),
        "units": sum(g.num_units for g in groups),
        # norms over all heads that a head prune cuts (their own tolerance, Case.documented, applies only here)
        "norms_over_heads": sorted({n.rsplit(".", 1)[0] for g in groups for n in g.rescale}),
        "exact": {},
    }
    base = _base(case, model, x)
    dense = outputs(model, x)
    caller_config = getattr(model, "config", None)
    config_before = caller_config.to_dict() if hasattr(caller_config, "to_dict") else None
    for i, fraction in enumerate(fractions):
        from prunekit.pruning import apply_plan_

        last = i == len(fractions) - 1
        pruned = model if last else copy.deepcopy(model)  # the last prune is in place: the caller's config
        plan = random_plan(groups, fraction, seed + i)
        expected = outputs(reference(model, groups, plan.keep), x)
        apply_plan_(pruned, plan, x, groups=groups)
        out["exact"][str(fraction)] = rel_err(outputs(pruned, x), expected)
        out.setdefault("changed", rel_err(outputs(pruned, x), dense))
        if last:
            with tempfile.TemporaryDirectory() as tmp:
                out |= _reload(case, pruned, plan, base, x, Path(tmp) / "ckpt")
    # HF shares one config object with whoever built the model: a prune must never change it
    out["config_untouched"] = None if config_before is None else caller_config.to_dict() == config_before
    return out
