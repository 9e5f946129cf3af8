"""Mixture-of-experts groups (structure/moe.py): fused experts of transformers 5 and experts in a
ModuleList; both prune exactly against the zero-masked reference (the router is untouched). Whole
experts as units (an option) prune exactly against the dense model whose removed experts' router
logits are -inf."""

from __future__ import annotations

import copy

import pytest
import torch
from coverage_cases import BY_NAME, outputs, reference, rel_err
from torch import nn

from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups
from prunekit.structure.moe import moe_groups
from prunekit.testing.reference import zero_masked


def test_fused_experts_units_are_blocks_of_neurons_shared_by_every_expert():
    model, x = BY_NAME["mixtral"].build()
    (g,) = [g for g in find_groups(model, x) if g.name == "model.layers.0.mlp.experts:neurons"]
    experts = model.model.layers[0].mlp.experts
    width = experts.down_proj.shape[2]
    assert g.num_units == width // 4  # 16-byte blocks of float32 neurons
    rows = {(s.param, s.dim): s.index for s in g.slices}
    assert rows[("model.layers.0.mlp.experts.gate_up_proj", 1)][1] == (
        4,
        width + 4,
        5,
        width + 5,
        6,
        width + 6,
        7,
        width + 7,
    )
    assert rows[("model.layers.0.mlp.experts.down_proj", 2)][1] == (4, 5, 6, 7)
    pruned = copy.deepcopy(model)
    apply_plan_(pruned, Plan(keep={g.name: [0, 2]}, num_units={g.name: g.num_units}), x, groups=[g])
    assert pruned.model.layers[0].mlp.experts.down_proj.shape[2] == 8


class _Expert(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(8, width), nn.Linear(8, width), nn.Linear(width, 8)

    def forward(self, x):
        return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))


class _ListMoE(nn.Module):
    """Top-1 routing over experts kept in a ModuleList (the pre-transformers-5 Mixtral layout)."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(8, 3, bias=False)
        self.experts = nn.ModuleList(_Expert(6) for _ in range(3))

    def forward(self, x):
        choice = self.gate(x).argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            out[choice == i] = expert(x[choice == i])
        return out


def test_experts_in_a_module_list_are_one_group_each_and_prune_exactly():
    torch.manual_seed(0)
    model, x = _ListMoE().eval(), torch.randn(16, 8)
    raws = moe_groups(model)
    assert [r["name"] for r in raws] == ["experts.0:neurons", "experts.1:neurons", "experts.2:neurons"]
    from prunekit.structure.group import Group

    groups = [Group(r["name"], r["kind"], r["layer"], r["num_units"], r["slices"], 0, 0) for r in raws]
    keep = {"experts.0:neurons": [0, 1, 5], "experts.2:neurons": [3]}
    reference = outputs(zero_masked(model, groups, keep), x)
    plan = Plan(keep=keep, num_units={g.name: 6 for g in groups})
    apply_plan_(model, plan, x, groups=groups)
    assert [e.w2.in_features for e in model.experts] == [3, 6, 1]
    assert rel_err(outputs(model, x), reference) < 1e-6


def test_whole_experts_are_an_option_cut_with_their_router_rows_and_exact():
    """find_groups(..., experts=True): one group per block whose units are experts (their slabs and
    router rows). Exact against the dense model whose removed experts' router logits are -inf
    (coverage_cases.reference); a zeroed router row instead (logit 0) would be far off."""
    model, x = BY_NAME["mixtral"].build()
    assert "expert" not in {g.kind for g in find_groups(model, x)}  # off by default
    groups = find_groups(model, x, experts=True)
    (g,) = [g for g in groups if g.name == "model.layers.0.mlp.experts:experts"]
    assert (g.kind, g.num_units, g.min_units) == ("expert", 4, 2)  # min_units: the router's top-k
    block = model.model.layers[0].mlp
    router_before = block.gate.weight.detach().clone()
    keep = {g.name: [1, 3]}
    expected, zeroed = (
        outputs(reference(model, groups, keep), x),
        outputs(zero_masked(model, groups, keep), x),
    )
    apply_plan_(model, Plan(keep=keep, num_units={g.name: 4}), x, groups=groups)
    assert block.experts.gate_up_proj.shape[0] == block.experts.down_proj.shape[0] == 2
    assert torch.equal(block.gate.weight, router_before[[1, 3]])
    assert block.experts.num_experts == block.gate.num_experts == 2
    assert rel_err(outputs(model, x), expected) < 1e-5
    assert rel_err(outputs(model, x), zeroed) > 1e-2  # the -inf reference is the one that matters
    assert model.config.prunekit_config_exact is False  # layer 1 keeps 4 experts: no single count


def test_a_plan_keeping_fewer_experts_than_top_k_is_refused_in_one_line():
    model, x = BY_NAME["qwen2_moe"].build()
    groups = find_groups(model, x, experts=True)
    name = "model.layers.1.mlp.experts:experts"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="keeps 1 experts but its router picks 2 per token") as err:
        apply_plan_(model, Plan(keep={name: [2]}, num_units={name: 4}), x)  # groups found by apply_plan_
    assert "\n" not in str(err.value) and f"add '{name}' to ignore" in str(err.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert {g.kind for g in groups} >= {"expert", "neuron"}


def test_removed_experts_leave_their_module_list_with_their_router_rows():
    torch.manual_seed(0)
    model, x = _ListMoE().eval(), torch.randn(16, 8)
    (r,) = [r for r in moe_groups(model, experts=True) if r["kind"] == "expert"]
    assert (r["name"], r["num_units"], r["min_units"]) == ("experts:experts", 3, 1)
    from prunekit.structure.group import Group

    g = Group(r["name"], r["kind"], r["layer"], r["num_units"], r["slices"], 0, 0, min_units=r["min_units"])
    kept_expert = copy.deepcopy(model.experts[2])
    keep = {g.name: [0, 2]}
    expected = outputs(reference(model, [g], keep), x)
    apply_plan_(model, Plan(keep=keep, num_units={g.name: 3}), x, groups=[g])
    assert len(model.experts) == 2 and model.gate.weight.shape == (2, 8)
    assert torch.equal(model.experts[1].w2.weight, kept_expert.w2.weight)
    assert rel_err(outputs(model, x), expected) < 1e-6
