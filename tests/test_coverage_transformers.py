"""Engine coverage on tiny HF configs with random weights (issue 12): surgery against a zero-masked
dense reference, with norm weights randomised so that a norm given to the wrong head cannot hide."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from prunekit.batch import logits_of
from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups
from prunekit.testing.hf_tiny import BUILDERS, SUPPORTED
from prunekit.testing.reference import randomise_norms, zero_masked

# the layouts of issue 12 (look-alikes in hf_tiny are run by the coverage matrix, tests/test_coverage_matrix.py)
CORE = [
    "llama",
    "bert",
    "distilbert",
    "vit",
    "gpt2",
    "gpt_neox",
    "falcon",
    "falcon_gqa",
    "phi",
    "phi3",
    "opt",
]
CORE += ["bart", "t5", "t5_gated", "stablelm_qknorm", "olmo2", "cohere_qknorm", "swin", "beit", "gpt_bigcode"]
CORE += ["mixtral", "qwen2_moe", "deberta_v2", "deberta_v2_pos", "mpnet", "codegen", "beit_shared"]
EXACT = [n for n in CORE if SUPPORTED[n]["heads"]]  # OLMo2: its eps at 1e-5 (the matrix, tests below)


def _random_plan(groups, fraction: float, seed: int = 3) -> Plan:
    """Remove ``fraction`` of every group's units, chosen at random (the same count in every layer)."""
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for group in groups:
        count = max(group.num_units - round(fraction * group.num_units), 1)
        keep[group.name] = sorted(torch.randperm(group.num_units, generator=g)[:count].tolist())
    return Plan(keep=keep, num_units={gr.name: gr.num_units for gr in groups})


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _prune(name: str, fraction: float, plan_of=_random_plan):
    """(model, inputs, groups, plan, dense logits, zero-masked reference logits, pruned logits)."""
    model, x = BUILDERS[name]()
    groups = find_groups(model, x)
    plan = plan_of(groups, fraction)
    with torch.no_grad():
        dense = logits_of(model, x)
        reference = logits_of(zero_masked(model, groups, plan.keep), x)
    apply_plan_(model, plan, x, groups=groups)
    with torch.no_grad():
        pruned = logits_of(model, x)
    return model, x, groups, plan, dense, reference, pruned


@pytest.mark.parametrize("fraction", [0.3, 0.5])
@pytest.mark.parametrize("name", EXACT)
def test_heads_and_neurons_prune_exactly_against_the_zero_masked_reference(name, fraction):
    model, x, groups, plan, dense, reference, pruned = _prune(name, fraction)
    assert {g.kind for g in groups} >= {"head", "neuron"}
    assert _rel_err(pruned, reference) < 1e-5
    assert _rel_err(pruned, dense) > 1e-4  # negative control: a real prune changes the output
    removed = sum(g.num_units - len(plan.keep[g.name]) for g in groups)
    assert removed > 0


@pytest.mark.parametrize("name", CORE)
def test_uniform_prune_is_expressible_in_config_json_exactly_where_the_family_reads_it(name, tmp_path):
    model, x = BUILDERS[name]()
    cfg_before = copy.deepcopy(model.config.to_dict())
    groups = find_groups(model, x)
    keep = {g.name: list(range(0, g.num_units, 2)) for g in groups}
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    assert model.config.prunekit_config_exact is SUPPORTED[name]["from_pretrained"]
    model.save_pretrained(tmp_path)
    if SUPPORTED[name]["from_pretrained"]:
        again = type(model).from_pretrained(tmp_path, attn_implementation="eager").eval()
        with torch.no_grad():
            assert torch.equal(logits_of(again, x), logits_of(model, x))
    else:  # the config cannot express the pruned widths: loading it fails loudly, never silently
        with pytest.raises(Exception, match="(?i)size|shape"):
            type(model).from_pretrained(tmp_path, attn_implementation="eager")
    fresh, _ = BUILDERS[name]()
    assert fresh.config.to_dict() == cfg_before  # builders, like callers, keep their own config


def test_stablelm_per_head_norms_follow_their_heads():
    model, x = BUILDERS["stablelm_qknorm"]()
    before = [n.weight.detach().clone() for n in model.model.layers[0].self_attn.q_layernorm.norms]
    groups = find_groups(model, x)
    slots = {g.name: g for g in groups}["model.layers.0.self_attn:heads"]
    keep = {g.name: list(range(g.num_units)) for g in groups}
    keep[slots.name] = [1]  # query head 1 of each of the 2 kv groups: heads 1 and 3 of 4
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    attn = model.model.layers[0].self_attn
    assert len(attn.q_layernorm.norms) == attn.q_layernorm.num_heads == 2
    for i, head in enumerate([1, 3]):
        assert torch.equal(attn.q_layernorm.norms[i].weight, before[head])
    assert len(attn.k_layernorm.norms) == 2 and attn.num_key_value_groups == 1


def test_t5_heads_are_one_group_per_stack_with_the_bias_columns():
    model, x = BUILDERS["t5"]()
    names = [g.name for g in find_groups(model, x)]
    assert names[:1] == ["encoder.block.*.layer.0.SelfAttention:heads"]
    assert {
        "decoder.block.*.layer.0.SelfAttention:heads",
        "decoder.block.*.layer.1.EncDecAttention:heads",
    } <= set(names)
    model, x, groups, plan, *_ = _prune("t5", 0.5)
    bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert bias.weight.shape == (8, 2) and bias.embedding_dim == 2
    assert model.config.num_heads == 2 and model.config.prunekit_config_exact is True


SHARED_TABLES = {  # builder: its one head group, the encoder's bias table (every layer adds it)
    "mpnet": ("mpnet.encoder.layer.*.attention:heads", "mpnet.encoder.relative_attention_bias.weight"),
    "beit_shared": (
        "beit.layers.*.attention:heads",
        "beit.shared_position_bias.relative_position_bias_table",
    ),
}


@pytest.mark.parametrize("name", list(SHARED_TABLES))
def test_a_shared_bias_table_gives_one_head_group_per_stack_and_is_cut_once(name):
    group, table = SHARED_TABLES[name]
    model, x, groups, plan, *_ = _prune(name, 0.5)
    heads = [g for g in groups if g.kind == "head"]
    assert [g.name for g in heads] == [group]
    assert [s.param for s in heads[0].slices].count(table) == 1  # every layer reads it; one slice
    assert model.get_parameter(table).shape[1] == len(plan.keep[group]) == 2  # (buckets, heads)
    counts = [getattr(m, "num_attention_heads", None) for m in model.modules()]
    assert {c for c in counts if isinstance(c, int)} == {2}  # every layer's attention


def test_deberta_position_projections_are_cut_with_their_heads():
    before, _ = BUILDERS["deberta_v2_pos"]()
    model, x, groups, plan, *_ = _prune("deberta_v2_pos", 0.5)
    kept = plan.keep["deberta.encoder.layer.0.attention.self:heads"]
    rows = [r for h in kept for r in range(8 * h, 8 * h + 8)]
    old, new = before.deberta.encoder.layer[0].attention.self, model.deberta.encoder.layer[0].attention.self
    for proj in ("pos_key_proj", "pos_query_proj", "query_proj"):
        assert torch.equal(getattr(new, proj).weight, getattr(old, proj).weight[rows])
    assert new.num_attention_heads == len(kept) == 2 and new.all_head_size == 16


def test_codegen_units_are_one_slot_of_every_shard_so_the_shards_stay_equal():
    model, x = BUILDERS["codegen"]()  # 16 heads of 4 in 4 shards: qkv rows [q | v | k] x 4 shards
    groups = find_groups(model, x)
    heads = {g.name: g for g in groups}["transformer.h.0.attn:heads"]
    assert heads.num_units == 4
    qkv = next(s for s in heads.slices if s.param == "transformer.h.0.attn.qkv_proj.weight")
    # slot 1 is head 1 of each shard (heads 1, 5, 9, 13): its q, v and k rows in each 48-row shard
    assert qkv.index[1] == tuple(
        i for s in range(4) for part in (0, 16, 32) for i in range(48 * s + part + 4, 48 * s + part + 8)
    )
    keep = {g.name: list(range(g.num_units)) for g in groups}
    keep[heads.name] = [0, 2, 3]
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    attn = model.transformer.h[0].attn
    assert (attn.num_attention_heads, attn.embed_dim, attn.mp_num) == (12, 48, 4)


def test_codegen_heads_that_do_not_fill_the_shards_equally_are_refused_in_one_line(caplog):
    import transformers

    cfg = transformers.CodeGenConfig(vocab_size=64, n_embd=48, n_layer=1, n_head=6, n_inner=32, rotary_dim=2,
                                     n_positions=32, bos_token_id=1, eos_token_id=2)  # fmt: skip
    model = transformers.CodeGenForCausalLM(cfg).eval()
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.transformer"):
        groups = find_groups(model, {"input_ids": torch.randint(1, 64, (2, 7))})
    assert {g.kind for g in groups} == {"neuron"}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "prunekit.structure.transformer"]
    assert "6 heads do not divide into 4 shards" in line and "add 'transformer.h.0.attn' to ignore" in line


def test_olmo2_norm_over_all_heads_is_cut_with_its_heads_and_rescaled():
    """OLMo2's q/k RMSNorm runs over every head's rows together: its kept weights are scaled by
    sqrt(all / kept), so the mean of squares over the kept rows equals the zero-masked dense model's
    over all rows. Exact but for eps (it acts as eps x kept / all): with eps 1e-12, exact to 1e-6."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-12,
                                   bos_token_id=1, eos_token_id=2)  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    model, x = randomise_norms(model), {"input_ids": torch.randint(1, 64, (2, 7))}
    groups = {g.name: g for g in find_groups(model, x)}
    kv = groups["model.layers.0.self_attn:kv_heads"]
    assert kv.rescale == ("model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight")
    attn = model.model.layers[0].self_attn
    q_before, k_before = attn.q_norm.weight.detach().clone(), attn.k_norm.weight.detach().clone()
    plan = Plan(keep={kv.name: [1]}, num_units={kv.name: 2})  # key-value head 1 and query heads 2, 3
    with torch.no_grad():
        reference = logits_of(zero_masked(model, list(groups.values()), plan.keep), x)
    apply_plan_(model, plan, x, groups=list(groups.values()))
    assert torch.allclose(attn.q_norm.weight, q_before[16:] * 2**0.5)  # 4 heads -> 2: sqrt(2)
    assert torch.allclose(attn.k_norm.weight, k_before[8:] * 2**0.5)  # 2 kv heads -> 1
    with torch.no_grad():
        assert _rel_err(logits_of(model, x), reference) < 1e-5


def test_a_layernorm_over_all_heads_is_offered_with_one_warning_per_module(caplog):
    """ESMC's q/k LayerNorm subtracts the mean over all heads: a head prune changes its statistics
    (the documented, approximate case), so find_groups says so once per attention module."""
    import transformers

    cfg = transformers.AutoConfig.for_model("esmc", vocab_size=64, hidden_size=32, intermediate_size=48,
                                            num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    model = transformers.AutoModelForMaskedLM.from_config(cfg).eval()
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.transformer"):
        groups = find_groups(model, {"input_ids": torch.randint(1, 64, (2, 7))})
    assert {g.kind for g in groups} >= {"head", "neuron"}
    assert caplog.text.count("so a head prune is approximate") == 2


class _OnePlus(nn.Module):
    """Gemma's (1 + w) RMSNorm form: rescaling w would not rescale its output, so it cannot be cut."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(size))

    def forward(self, x):
        return (1 + self.weight) * x * x.pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()


def test_the_norm_probe_tells_rms_mean_and_unknown_forms_apart():
    from prunekit.structure.heads import norm_statistic

    assert norm_statistic(_OnePlus(16), 16) is None
    assert norm_statistic(nn.LayerNorm(16), 16) == "mean"
    assert norm_statistic(nn.RMSNorm(16), 16) == "rms"


def test_a_norm_over_all_heads_of_an_unknown_form_is_refused_in_one_line_naming_the_ignore_pattern(caplog):
    """OLMo2 with its q_norm (over all heads) swapped for a form prunekit does not describe: its heads
    are withheld with one line per attention module naming it and the ``ignore`` pattern; with that
    pattern the module is never inspected (no warning) and the FFN neurons are still offered."""
    model, x = BUILDERS["olmo2"]()
    for layer in model.model.layers:
        layer.self_attn.q_norm = _OnePlus(layer.self_attn.q_norm.weight.numel())
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.transformer"):
        groups = find_groups(model, x)
    assert {g.kind for g in groups} == {"neuron"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    for i, line in enumerate(lines):
        attn = f"model.layers.{i}.self_attn"
        assert line.startswith(f"attention {attn}: head groups not offered ({attn}.q_norm.weight belongs")
        assert f"add '{attn}' to ignore" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.transformer"):
        kept = find_groups(model, x, ignore=["*.self_attn"])
    assert not caplog.records
    assert [g.name for g in kept] == [g.name for g in groups]


def test_phi3_non_uniform_heads_get_per_layer_configs_and_the_callers_config_is_untouched():
    model, x = BUILDERS["phi3"]()
    shared = model.config
    before = copy.deepcopy(shared.to_dict())
    groups = find_groups(model, x)
    keep = {g.name: list(range(g.num_units)) for g in groups}
    keep["model.layers.0.self_attn:heads"] = [0]  # layer 0: 2 query heads, layer 1: 4
    plan = Plan(keep=keep, num_units={g.name: g.num_units for g in groups})
    with torch.no_grad():
        reference = logits_of(zero_masked(model, groups, keep), x)
    apply_plan_(model, plan, x, groups=groups)
    with torch.no_grad():
        assert _rel_err(logits_of(model, x), reference) < 1e-5
    assert shared.to_dict() == before  # the object the caller built the model from
    assert model.config.prunekit_config_exact is False
    assert model.model.layers[0].self_attn.config.num_attention_heads == 2
    assert model.config.prunekit_layer_widths["model.layers.1"]["heads"] == 4


def test_gpt2_ffn_alone_prunes_with_attention_ignored():
    model, x = BUILDERS["gpt2"]()
    groups = find_groups(model, x, ignore=["*.attn"])
    assert [g.kind for g in groups] == ["neuron", "neuron"]
    plan = _random_plan(groups, 0.5)
    with torch.no_grad():
        reference = logits_of(zero_masked(model, groups, plan.keep), x)
    apply_plan_(model, plan, x, groups=groups)
    assert model.transformer.h[0].mlp.c_fc.nf == 24 and model.config.n_inner == 24
    with torch.no_grad():
        assert _rel_err(logits_of(model, x), reference) < 1e-5


def test_uniform_gives_identical_layers_identical_widths_and_from_pretrained_loads(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    from prunekit.planner import make_plan

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=148,  # the old planner gave 88 and 89 here
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    model = AutoModelForCausalLM.from_config(cfg).eval()
    x = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))}
    groups = find_groups(model, x)
    plan = make_plan(model, groups, {"metric": "params", "saved": 0.4}, "uniform", example_inputs=x)
    widths = {g.name.replace("layers.1.", "layers.0."): set() for g in groups}
    for g in groups:
        widths[g.name.replace("layers.1.", "layers.0.")].add(len(plan.keep[g.name]))
    assert all(len(w) == 1 for w in widths.values()), widths  # layer 0 and layer 1 agree
    assert len(plan.keep["model.layers.0.mlp:neurons"]) < 148
    apply_plan_(model, plan, x, groups=groups)
    assert model.config.prunekit_config_exact is True
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.allclose(again(**x).logits, model(**x).logits, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "gpt2",
        "gpt_neox",
        "falcon",
        "falcon_gqa",
        "gpt_bigcode",
        "phi3",
        "t5",
        "mixtral",
        "codegen",
        "mpnet",
        "deberta_v2_pos",
    ],
)
def test_predicted_size_equals_the_pruned_models_params_and_macs(name):
    from prunekit.metrics import count_macs
    from prunekit.structure import remaining_size

    model, x = BUILDERS[name]()
    groups = find_groups(model, x)
    plan = _random_plan(groups, 0.5)
    predicted = remaining_size(model, groups, {k: len(v) for k, v in plan.keep.items()}, x)
    apply_plan_(model, plan, x, groups=groups)
    assert predicted == (sum(p.numel() for p in model.parameters()), count_macs(model, x))


@pytest.mark.parametrize(
    "name", ["stablelm_qknorm", "t5", "phi3", "falcon_gqa", "gpt2", "codegen", "mpnet", "beit_shared"]
)
def test_a_second_round_keeps_group_names_and_equals_the_composed_plan(name):
    from prunekit.pruning import compose_plans

    model, x = BUILDERS[name]()
    first_groups = find_groups(model, x)
    first = _random_plan(first_groups, 0.3, seed=1)
    apply_plan_(model, first, x, groups=first_groups)
    groups = find_groups(model, x)
    assert [g.name for g in groups] == [g.name for g in first_groups]
    second = _random_plan(groups, 0.3, seed=2)
    apply_plan_(model, second, x, groups=groups)
    fresh, _ = BUILDERS[name]()
    apply_plan_(fresh, compose_plans(first, second), x)
    with torch.no_grad():
        assert torch.allclose(logits_of(fresh, x), logits_of(model, x), atol=1e-6)
