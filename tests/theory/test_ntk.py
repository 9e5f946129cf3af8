"""Exact-answer tests of the NTK estimators (prunekit.theory.ntk, ntk_jacobian; prunekit.structure.units)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunekit.structure import Group, ParamSlice
from prunekit.theory.ntk import (
    group_ntk_traces,
    level1_gram,
    level1_trace_drop,
    level2_gram,
    masked_units,
    module_partition,
    ntk_gram,
)

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared CPU, tiny backward passes are many times faster than with
    threads spinning against other processes (the estimators themselves never change thread settings)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _mlp(widths: tuple[int, ...] = (4, 6, 5, 3), seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(D)


def _hidden_group(model: nn.Sequential, i: int) -> Group:
    """Output units of linear layer ``model[i]``: its rows and bias entries, and the next linear's columns."""
    w = model[i].weight
    units = tuple((u,) for u in range(w.shape[0]))
    slices = (
        ParamSlice(f"{i}.weight", 0, units),
        ParamSlice(f"{i}.bias", 0, units),
        ParamSlice(f"{i + 2}.weight", 1, units),
    )
    return Group(
        f"{i}:out", "neuron", str(i), w.shape[0], slices, w.shape[1] + 1 + model[i + 2].weight.shape[0], 0
    )


def _jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reference: the full Jacobian (n·k, P) by torch.autograd.functional.jacobian, and Σ_rows J² per entry."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for _, p in model.named_parameters())

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    model.eval()
    jac = torch.autograd.functional.jacobian(f, params)
    rows = x.shape[0] * f(*params)[0].numel()
    blocks = [j.reshape(rows, -1) for j in jac]
    sq = {n: j.square().sum(0).reshape(p.shape) for n, j, p in zip(names, blocks, params, strict=True)}
    return torch.cat(blocks, 1), sq


def _exact_unit_traces(model: nn.Sequential, sq: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    return sq[f"{i}.weight"].sum(1) + sq[f"{i}.bias"] + sq[f"{i + 2}.weight"].sum(0)


# ------------------------------------------------------------------------------------------ Gram matrix
@pytest.mark.parametrize("bias", [False, True])
def test_linear_model_ntk_is_x_xt(bias: bool) -> None:
    torch.manual_seed(1)
    x = torch.randn(7, 5, dtype=D)
    k = 3
    model = nn.Linear(5, k, bias=bias).to(D)
    xxt = x @ x.T + (1.0 if bias else 0.0)
    assert torch.allclose(ntk_gram(model, (x, None)), k * xxt, rtol=1e-12, atol=1e-12)
    full = ntk_gram(model, (x, None), output="full")
    assert torch.allclose(full, torch.kron(xxt, torch.eye(k, dtype=D)), rtol=1e-12, atol=1e-12)


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def _conv_bn() -> _ConvBN:
    torch.manual_seed(2)
    m = _ConvBN().to(D)
    with torch.no_grad():  # non-trivial running statistics: eval-mode BN must use them
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("engine", ["vmap", "vjp", "loop"])
def test_streamed_gram_equals_full_jacobian(engine: str) -> None:
    model = _conv_bn().train()  # ntk_gram must switch to eval mode and back
    x = torch.randn(5, 1, 8, dtype=D)
    jac, _ = _jacobian(model, x)
    model.train()
    ref_full = jac @ jac.T
    k = 4
    ref_trace = ref_full.reshape(5, k, 5, k).diagonal(dim1=1, dim2=3).sum(-1)
    # a tiny block budget forces one tensor per block and the paired-chunk path for the big ones
    for budget in (2**20, 40):
        full = ntk_gram(model, x, output="full", engine=engine, block_elements=budget, chunk=2)
        trace = ntk_gram(model, x, output="trace", engine=engine, block_elements=budget)
        assert torch.allclose(full, ref_full, rtol=1e-8, atol=1e-12 * ref_full.abs().max())
        assert torch.allclose(trace, ref_trace, rtol=1e-8, atol=1e-12 * ref_trace.abs().max())
    assert model.training and model.bn.training


def test_param_filter_blocks_add_up() -> None:
    model = _mlp()
    x = torch.randn(6, 4, dtype=D)
    full = ntk_gram(model, x)
    parts = [ntk_gram(model, x, param_filter=names) for names in module_partition(model).values()]
    assert torch.allclose(sum(parts), full, rtol=1e-12)
    # a mask that splits one tensor: the two halves add to the tensor's block
    w = model[2].weight
    half = torch.zeros(w.shape, dtype=torch.bool)
    half[:2] = True
    a = ntk_gram(model, x, param_filter={"2.weight": half})
    b = ntk_gram(model, x, param_filter={"2.weight": ~half})
    assert torch.allclose(a + b, ntk_gram(model, x, param_filter=["2.weight"]), rtol=1e-12)


def test_gram_rejects_bad_arguments() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="output must be"):
        ntk_gram(model, torch.randn(3, 4, dtype=D), output="diag")
    with pytest.raises(ValueError, match="at most 2 inputs"):
        ntk_gram(model, torch.randn(3, 4, dtype=D), max_inputs=2)
    with pytest.raises(ValueError, match="not a trainable parameter"):
        ntk_gram(model, torch.randn(3, 4, dtype=D), param_filter=["nope.weight"])


# ---------------------------------------------------------------------------------- Hutchinson traces
def test_hutchinson_group_traces_match_exact_within_3_se() -> None:
    model = _mlp()
    x = torch.randn(8, 4, dtype=D)
    _, sq = _jacobian(model, x)
    groups = [_hidden_group(model, 0), _hidden_group(model, 2)]
    t = group_ntk_traces(model, (x, torch.zeros(8)), groups, num_probes=100, seed=3)
    assert not t.is_partition
    exact_total = sum(float(s.sum()) for s in sq.values())
    assert abs(t.total - exact_total) <= 3 * t.total_se
    for g in groups:
        i = int(g.layer)
        exact_units = _exact_unit_traces(model, sq, i)
        assert abs(t.group[g.name] - float(exact_units.sum())) <= 3 * t.group_se[g.name], g.name
        assert (t.unit[g.name] - exact_units).abs().le(3 * t.unit_se[g.name] + 1e-12).all(), g.name
        # the group trace is the sum of its unit traces (units do not overlap within a group)
        assert t.group[g.name] == pytest.approx(float(t.unit[g.name].sum()), rel=1e-12)
    # entries of "2.weight" belong to both groups, so group traces over-count the total's share
    assert sum(t.group.values()) > t.group["0:out"]


def test_partition_traces_sum_to_total_exactly_and_chunking_is_invisible() -> None:
    model = _conv_bn()
    x = torch.randn(6, 1, 8, dtype=D)
    part = module_partition(model)
    t = group_ntk_traces(model, x, part, num_probes=20, seed=0)
    assert t.is_partition
    assert sum(t.group.values()) == pytest.approx(t.total, rel=1e-12)
    for g, names in part.items():  # units of a dict group are its tensors
        assert len(t.unit[g]) == len(names)
    t2 = group_ntk_traces(model, x, part, num_probes=20, seed=0, chunk=4)
    for g in part:
        assert t2.group[g] == pytest.approx(t.group[g], rel=1e-10)
    t3 = group_ntk_traces(model, x, part, num_probes=20, seed=1)
    assert t3.total != t.total  # a different seed draws different signs


def test_traces_reject_bad_groups() -> None:
    model = _mlp()
    x = torch.randn(4, 4, dtype=D)
    with pytest.raises(ValueError, match="num_probes"):
        group_ntk_traces(model, x, module_partition(model), num_probes=1)
    with pytest.raises(ValueError, match="partition the trainable parameters"):
        group_ntk_traces(model, x, {"a": ["0.weight"]})
    with pytest.raises(ValueError, match="disjoint"):
        group_ntk_traces(model, x, {"a": ["0.weight"], "b": ["0.weight"]})


def test_relative_se_shrinks_with_probes() -> None:
    """Relative SE of per-group traces at 10/50/200 probes on a small MLP (printed for the cost study)."""
    model = _mlp((10, 32, 32, 5))
    x = torch.randn(32, 10, dtype=D)
    part = module_partition(model)
    rel = {}
    for p in (10, 50, 200):
        t = group_ntk_traces(model, x, part, num_probes=p, seed=0)
        rel[p] = {g: t.group_se[g] / t.group[g] for g in part}
    for p, r in rel.items():
        print(f"relative SE at {p:3d} probes: " + ", ".join(f"{g}={v:.2%}" for g, v in r.items()))
    for g in part:
        assert rel[200][g] < rel[10][g]
        assert rel[200][g] < 0.25


# ------------------------------------------------------------------------------------ removal effects
def test_level2_with_nothing_removed_is_the_kernel_and_restores_weights() -> None:
    model = _conv_bn()
    x = torch.randn(5, 1, 8, dtype=D)
    part = module_partition(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(level2_gram(model, x, part, {}), ntk_gram(model, x))
    assert torch.equal(level1_gram(model, x, part, {}), ntk_gram(model, x))
    conv = Group(
        "conv:out",
        "channel",
        "conv",
        3,
        (
            ParamSlice("conv.weight", 0, ((0,), (1,), (2,))),
            ParamSlice("bn.running_var", 0, ((0,), (1,), (2,))),
            ParamSlice("bn.weight", 0, ((0,), (1,), (2,))),
        ),
        1,
        1,
    )
    with masked_units(model, [conv], {"conv:out": [1]}):
        assert (
            float(model.conv.weight[1].detach().abs().sum()) == 0.0
            and float(model.bn.weight[1].detach()) == 0.0
        )
        assert float(model.bn.running_var[1]) == float(before["bn.running_var"][1])  # buffers are left alone
        assert float(model.conv.weight[0].detach().abs().sum()) > 0
    level2_gram(model, x, [conv], {"conv:out": [0, 2]})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored bit for bit


class _Branches(nn.Module):
    """f(x) = A x + MLP(x): the linear layer A has no parameters downstream of it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.a = nn.Linear(4, 3).to(D)
        self.mlp = _mlp((4, 6, 3), seed=7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.mlp(x)


def test_level1_equals_level2_without_downstream_coupling() -> None:
    x = torch.randn(6, 4, dtype=D)
    # one hidden layer: a hidden unit's only downstream path is its own output column
    shallow = _mlp((4, 6, 3))
    g = [_hidden_group(shallow, 0)]
    removed = {"0:out": [1, 4]}
    l1, l2 = level1_gram(shallow, x, g, removed), level2_gram(shallow, x, g, removed)
    assert torch.allclose(l1, l2, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(l1, ntk_gram(shallow, x))
    # the last layer's bias: an additive output offset, no other Jacobian depends on it
    deep = _mlp()
    part = {"head_bias": ["4.bias"], "rest": [n for n, _ in deep.named_parameters() if n != "4.bias"]}
    removed = {"head_bias": None}
    l1, l2 = (
        level1_gram(deep, x, part, removed, output="full"),
        level2_gram(deep, x, part, removed, output="full"),
    )
    assert torch.allclose(l1, l2, rtol=1e-10, atol=1e-12)
    # a whole linear layer on its own branch, f(x) = A x + MLP(x): nothing downstream depends on A
    branch = _Branches()
    part = {
        "a": ["a.weight", "a.bias"],
        "mlp": [n for n, _ in branch.named_parameters() if not n.startswith("a.")],
    }
    l1, l2 = level1_gram(branch, x, part, {"a": None}), level2_gram(branch, x, part, {"a": None})
    assert torch.allclose(l1, l2, rtol=1e-10, atol=1e-12)
    assert torch.allclose(l1, ntk_gram(branch, x, param_filter=part["mlp"]), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(l1, ntk_gram(branch, x))
    # negative control: a first-layer unit of a deeper net changes the Jacobians downstream of it
    g = [_hidden_group(deep, 0)]
    removed = {"0:out": [2]}
    assert not torch.allclose(level1_gram(deep, x, g, removed), level2_gram(deep, x, g, removed), rtol=1e-3)


def test_level1_trace_drop_from_unit_traces() -> None:
    model = _mlp()
    x = torch.randn(8, 4, dtype=D)
    _, sq = _jacobian(model, x)
    groups = [_hidden_group(model, 0), _hidden_group(model, 2)]
    t = group_ntk_traces(model, x, groups, num_probes=200, seed=5)
    removed = {"2:out": [0, 3]}
    drop = level1_trace_drop(t, removed)
    assert drop["removed"] == pytest.approx(float(t.unit["2:out"][[0, 3]].sum()), rel=1e-12)
    assert drop["remaining"] == pytest.approx(t.total - drop["removed"], rel=1e-12)
    exact = float(_exact_unit_traces(model, sq, 2)[[0, 3]].sum())
    exact_l1 = float(ntk_gram(model, x).trace() - level1_gram(model, x, groups, removed).trace())
    assert exact_l1 == pytest.approx(exact, rel=1e-10)  # the Level-1 Gram removes exactly these entries
    assert abs(drop["removed"] - exact) <= 4 * drop["se"]
    whole = level1_trace_drop(t, {"0:out": None})
    assert whole["removed"] == pytest.approx(t.group["0:out"])
    with pytest.raises(ValueError, match="unknown group"):
        level1_trace_drop(t, {"nope": [0]})
    with pytest.raises(ValueError, match="out of range"):
        level1_trace_drop(t, {"0:out": [6]})
    with pytest.raises(ValueError, match="unknown group"):
        level2_gram(model, x, groups, {"nope": [0]})


# --------------------------------------------------------------------------------------- HF models
def test_tiny_bert_gram_and_traces() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=12,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).train()
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(0, 40, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    only = ["bert.encoder.layer.0.attention.self.query.weight", "classifier.weight"]
    auto = ntk_gram(model, (inputs, None), param_filter=only)  # hooks (vmap→vjp fallback: test_per_sample)
    loop = ntk_gram(model, (inputs, None), param_filter=only, engine="loop")
    assert torch.allclose(auto, loop, rtol=1e-5, atol=1e-9 * float(loop.abs().max()))
    assert float(loop.trace()) > 0
    assert model.config._attn_implementation == "sdpa" and model.training  # restored
    part = module_partition(model)
    t = group_ntk_traces(model, (inputs, None), part, num_probes=4)
    assert sum(t.group.values()) == pytest.approx(t.total, rel=1e-9)
    assert t.group["classifier"] > 0


def test_traces_work_under_no_grad() -> None:
    model = _mlp()
    x = torch.randn(4, 4, dtype=D)
    with torch.no_grad():
        t = group_ntk_traces(model, x, module_partition(model), num_probes=3)
    assert t.total > 0


# ------------------------------------------------------------------ with prunekit's own group finder
@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_bert"])
def test_groups_from_find_groups(name: str) -> None:
    """Per-unit traces of real groups add up to group traces, and Level 2 through masked_units equals the
    Gram computed inside prunekit.structure.mask_groups (the two masking helpers agree)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from prunekit.structure import find_groups
    from prunekit.structure.masking import mask_groups
    from prunekit.structure.units import removed_entry_masks, trainable_parameters
    from prunekit.testing import models as tiny

    model = getattr(tiny, name)()
    x = tiny.example_inputs_for(model, batch=3, seq_len=5)
    groups = find_groups(model, x)
    t = group_ntk_traces(model, x, groups, num_probes=4)
    for g in groups:
        assert len(t.unit[g.name]) == g.num_units
        assert t.group[g.name] == pytest.approx(float(t.unit[g.name].sum()), rel=1e-9)
        assert t.group[g.name] > 0
    g = groups[0]
    removed = {g.name: [0, 1]}
    only = [n for n in trainable_parameters(model) if n.startswith(g.layer)]  # keep the test small
    masks = removed_entry_masks(model, groups, removed)
    keep = {
        n: ~masks[n] if n in masks else torch.ones(trainable_parameters(model)[n].shape, dtype=torch.bool)
        for n in only
    }
    with mask_groups(model, groups, removed):
        ref = ntk_gram(model, x, param_filter=keep, engine="vjp")
    with masked_units(model, groups, removed):
        ours = ntk_gram(model, x, param_filter=keep, engine="vjp")
    assert torch.equal(ours, ref)
    assert not torch.allclose(ours, ntk_gram(model, x, param_filter=only, engine="vjp"))


class _Tied(nn.Module):
    """y = V tanh(W tanh(W x)): unit j of W's output owns row j AND column j of the same tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(5, 5)
        self.v = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(torch.tanh(self.w(torch.tanh(self.w(x)))))


def test_overlapping_slices_of_one_tensor_count_once() -> None:
    torch.manual_seed(4)
    model = _Tied().to(D)
    x = torch.randn(6, 5, dtype=D)
    _, sq = _jacobian(model, x)
    units = tuple((j,) for j in range(5))
    g = Group(
        "w:out", "neuron", "w", 5, (ParamSlice("w.weight", 0, units), ParamSlice("w.weight", 1, units)), 9, 0
    )
    w = sq["w.weight"]
    exact = w.sum(1) + w.sum(0) - w.diagonal()  # row j ∪ column j
    t = group_ntk_traces(model, x, [g], num_probes=200, seed=2)
    assert (t.unit["w:out"] - exact).abs().le(3 * t.unit_se["w:out"]).all()
    assert abs(t.group["w:out"] - float(w.sum())) <= 3 * t.group_se["w:out"]  # the union is all of W
    d = t.to_dict()
    assert d["groups"]["w:out"]["unit_traces"] == t.unit["w:out"].tolist() and d["total"] == t.total


def test_unit_reducer_is_exact_on_exact_squares() -> None:
    """The per-unit / per-group bookkeeping itself, without Monte-Carlo noise: fed the exact Σ J² per entry
    it returns the exact traces (fast path for an MLP group, mask path for row ∪ column of one tensor)."""
    from prunekit.structure.units import UnitReducer, normalise_groups

    torch.manual_seed(4)
    tied = _Tied().to(D)
    _, sq = _jacobian(tied, torch.randn(6, 5, dtype=D))
    units = tuple((j,) for j in range(5))
    g = Group(
        "w:out", "neuron", "w", 5, (ParamSlice("w.weight", 0, units), ParamSlice("w.weight", 1, units)), 9, 0
    )
    [(_, spec)], _ = normalise_groups([g], tied)
    per_unit, total = UnitReducer(spec, {k: v.shape for k, v in sq.items()})(sq)
    w = sq["w.weight"]
    assert torch.allclose(per_unit, w.sum(1) + w.sum(0) - w.diagonal(), rtol=1e-12)
    assert float(total) == pytest.approx(float(w.sum()), rel=1e-12)

    mlp = _mlp()
    _, sq = _jacobian(mlp, torch.randn(5, 4, dtype=D))
    [(_, spec)], _ = normalise_groups([_hidden_group(mlp, 2)], mlp)
    per_unit, total = UnitReducer(spec, {k: v.shape for k, v in sq.items()})(sq)
    assert torch.allclose(per_unit, _exact_unit_traces(mlp, sq, 2), rtol=1e-12)
    assert float(total) == pytest.approx(float(per_unit.sum()), rel=1e-12)
