"""Engine coverage on tiny HF configs with random weights (issue 12): surgery against a zero-masked
dense reference, with norm weights randomised so that a norm given to the wrong head cannot hide."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups


def _stablelm(qk_layernorm: bool):
    from transformers import StableLmConfig, StableLmForCausalLM

    torch.manual_seed(0)
    cfg = StableLmConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        qk_layernorm=qk_layernorm,
        attn_implementation="eager",
    )
    model = StableLmForCausalLM(cfg).eval()
    with torch.no_grad():  # default norms are all equal, which hides a norm given to the wrong head
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def _inputs() -> dict:
    return {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))}


def _drop_every_other(groups) -> Plan:
    keep = {g.name: list(range(0, g.num_units, 2)) for g in groups}
    return Plan(keep=keep, num_units={g.name: g.num_units for g in groups})


def _zero_masked(model, groups, plan: Plan):
    """The dense model with each removed unit's entries set to zero (an independent reference)."""
    dense = copy.deepcopy(model)
    params = dict(dense.named_parameters())
    with torch.no_grad():
        for g in groups:
            removed = [u for u in range(g.num_units) if u not in plan.keep[g.name]]
            for s in g.slices:
                index = [i for u in removed for i in s.index[u]]
                params[s.param].index_fill_(s.dim, torch.tensor(index, dtype=torch.long), 0.0)
    return dense


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _prune_and_compare(model, groups) -> tuple[float, float]:
    x = _inputs()
    plan = _drop_every_other(groups)
    with torch.no_grad():
        dense = model(**x).logits
        reference = _zero_masked(model, groups, plan)(**x).logits
    apply_plan_(model, plan, x, groups=groups)
    with torch.no_grad():
        pruned = model(**x).logits
    return _rel_err(pruned, reference), _rel_err(pruned, dense)


def test_stablelm_heads_prune_exactly_against_zero_masked_reference():
    model = _stablelm(qk_layernorm=False)
    groups = find_groups(model, _inputs())
    assert {g.kind for g in groups} == {"head", "kv_head", "neuron"}
    exact, changed = _prune_and_compare(model, groups)
    assert exact < 1e-5
    assert changed > 1e-2  # negative control: a real prune changes the output


def test_stablelm_per_head_qk_norms_refuse_head_groups_and_ffn_stays_exact(caplog):
    model = _stablelm(qk_layernorm=True)
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.transformer"):
        groups = find_groups(model, _inputs())
    assert {g.kind for g in groups} == {"neuron"}  # never silently wrong: no head group is offered
    assert "layers.0.self_attn: head groups not offered" in caplog.text
    assert "q_layernorm" in caplog.text
    exact, changed = _prune_and_compare(model, groups)
    assert exact < 1e-5
    assert changed > 1e-2


@pytest.mark.parametrize("name", ["olmo2", "swin"])
def test_head_sized_norms_and_bias_tables_offer_only_ffn_groups(name, caplog):
    import transformers as hf

    torch.manual_seed(0)
    if name == "olmo2":  # q/k norms over all heads (hidden size), not per head
        cfg = hf.Olmo2Config(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4
        )
        model, x = hf.AutoModelForCausalLM.from_config(cfg).eval(), _inputs()
    else:  # a relative-position bias table with one column per head
        cfg = hf.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4
        )
        model, x = hf.AutoModelForImageClassification.from_config(cfg).eval(), torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="prunekit.structure.transformer"):
        groups = find_groups(model, x)
    assert groups and {g.kind for g in groups} == {"neuron"}
    assert "head groups not offered" in caplog.text


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
    model, x = AutoModelForCausalLM.from_config(cfg).eval(), _inputs()
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


def test_unsupported_attention_names_the_ignore_pattern_and_ignore_is_applied_first():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    x = _inputs()
    with pytest.raises(ValueError, match=r"add 'transformer.h.0.attn' to ignore \(or '\*.attn'"):
        find_groups(model.eval(), x)
    with pytest.raises(ValueError, match="attention modules are ignored, but prunekit finds no feed-forward"):
        find_groups(model, x, ignore=["*.attn"])
