"""Hessian sharpness estimators checked against exactly known Hessians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from prunekit.structure import Group, ParamSlice
from prunekit.theory.hessian import gauss_newton_top_eigenvalue, hessian_trace, hvp, top_eigenvalue


class Quadratic(nn.Module):
    """Outputs its own parameters; with ``quad_loss`` the loss is ½ θᵀAθ, so the Hessian is exactly A."""

    def __init__(self, sizes: tuple[int, ...], seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.parts = nn.ParameterList([nn.Parameter(torch.randn(n, generator=gen)) for n in sizes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(self.parts)).expand(x.shape[0], -1)


def quad_loss(a: torch.Tensor):
    return lambda out, _labels: 0.5 * ((out @ a) * out).sum(dim=1).mean()


def sym_matrix(eigs: list[float], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen, dtype=torch.float64))
    return (q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T).float()


def dummy_batch(n: int = 4):
    return torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)


def test_hvp_of_a_quadratic_is_a_times_v():
    a = sym_matrix([5.0, 3.0, 1.0, -2.0, 0.5, 0.1])
    model = Quadratic((2, 4))
    v = torch.randn(6, generator=torch.Generator().manual_seed(1))
    hv = hvp(model, dummy_batch(), [v[:2], v[2:]], loss_fn=quad_loss(a))
    torch.testing.assert_close(torch.cat(hv), a @ v, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="vectors for 2 trainable"):
        hvp(model, dummy_batch(), [v], loss_fn=quad_loss(a))


def test_trace_and_per_tensor_traces_of_a_quadratic():
    a = sym_matrix([8.0, 4.0, 2.0, 1.0, 1.0, 0.5, 0.2, 0.1], seed=3)
    model = Quadratic((3, 5))
    res = hessian_trace(model, dummy_batch(), num_probes=64, loss_fn=quad_loss(a), seed=2)
    exact_blocks = [float(torch.diagonal(a)[:3].sum()), float(torch.diagonal(a)[3:].sum())]
    assert abs(res["trace"] - float(torch.trace(a))) < 3 * res["trace_se"] + 1e-4
    names = list(res["per_tensor"])
    assert names == ["parts.0", "parts.1"]
    for name, exact in zip(names, exact_blocks, strict=True):
        assert abs(res["per_tensor"][name] - exact) < 3 * res["per_tensor_se"][name] + 1e-4
    # the blocks come from the same probes, so they add up to the total exactly, probe by probe
    assert sum(res["per_tensor"].values()) == pytest.approx(res["trace"], rel=1e-6)
    # layer-normalised trace: Σ_l ‖θ_l‖² tr(H_ll) / P
    norms = [float(p.detach().pow(2).sum()) for p in model.parts]
    expected = sum(n * t for n, t in zip(norms, res["per_tensor"].values(), strict=True)) / 8
    assert res["normalized_trace"] == pytest.approx(expected, rel=1e-6)
    assert res["num_params"] == 8


def test_hutchpp_is_exact_when_the_hessian_has_low_rank():
    # rank 3 dominates a 40-dim matrix: Hutch++ captures it with its sketch; Hutchinson keeps full variance
    eigs = [50.0, 30.0, -20.0] + [0.01] * 37
    a = sym_matrix(eigs, seed=5)
    model = Quadratic((15, 25))
    exact = float(torch.trace(a))
    errs = {"hutchinson": [], "hutchpp": []}
    for method in errs:
        for seed in range(6):
            res = hessian_trace(
                model, dummy_batch(), num_probes=12, method=method, loss_fn=quad_loss(a), seed=seed
            )
            errs[method].append(res["trace"] - exact)
            assert sum(res["per_tensor"].values()) == pytest.approx(res["trace"], rel=1e-5, abs=1e-4)
    rms = {m: math.sqrt(np.mean(np.square(e))) for m, e in errs.items()}
    assert rms["hutchpp"] < 0.1 * rms["hutchinson"], rms
    with pytest.raises(ValueError, match="num_probes >= 3"):
        hessian_trace(model, dummy_batch(), num_probes=2, method="hutchpp", loss_fn=quad_loss(a))


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_eigenvalue_of_a_quadratic(method):
    a = sym_matrix([10.0, 4.0, 2.0, 1.0, -1.0, 0.3], seed=7)
    model = Quadratic((6,))
    res = top_eigenvalue(model, dummy_batch(), iters=60, tol=1e-7, method=method, loss_fn=quad_loss(a))
    assert res["converged"]
    assert res["eigenvalue"] == pytest.approx(10.0, rel=1e-3)
    with pytest.raises(ValueError, match="unknown eigenvalue method"):
        top_eigenvalue(model, dummy_batch(), method="arnoldi", loss_fn=quad_loss(a))


def test_lanczos_finds_the_largest_algebraic_eigenvalue_of_an_indefinite_hessian():
    a = sym_matrix([3.0, 1.0, 0.5, -9.0, -0.2], seed=8)  # power iteration would chase -9
    res = top_eigenvalue(
        Quadratic((5,)), dummy_batch(), iters=10, tol=1e-8, method="lanczos", loss_fn=quad_loss(a)
    )
    assert res["eigenvalue"] == pytest.approx(3.0, rel=1e-4)


def test_gauss_newton_of_a_linear_softmax_model_matches_the_explicit_matrix():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    params = dict(model.named_parameters())

    def logits_of_flat(flat: torch.Tensor) -> torch.Tensor:
        w, b = flat[:12].view(3, 4), flat[12:]
        return functional_call(model, {"weight": w, "bias": b}, (x,))

    theta = torch.cat([params["weight"].detach().reshape(-1), params["bias"].detach()])
    jac = torch.autograd.functional.jacobian(logits_of_flat, theta)  # (N, C, P)
    p = F.softmax(logits_of_flat(theta), dim=1).detach()
    h_out = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    g = torch.einsum("ncp,ncd,ndq->pq", jac, h_out, jac) / x.shape[0]
    exact = float(torch.linalg.eigvalsh(g.double())[-1])
    for method in ("power", "lanczos"):
        res = gauss_newton_top_eigenvalue(model, (x, y), iters=200, tol=1e-8, method=method)
        assert res["eigenvalue"] == pytest.approx(exact, rel=1e-3), method


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat0), names


def test_per_group_and_per_unit_traces_match_the_exact_hessian_diagonal():
    model = tiny_mlp()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    units = tuple((i,) for i in range(6))
    hidden = Group(
        name="0:out",
        kind="neuron",
        layer="0",
        num_units=6,
        slices=(
            ParamSlice("0.weight", 0, units),
            ParamSlice("0.bias", 0, units),
            ParamSlice("2.weight", 1, units),
        ),
        params_per_unit=4 + 1 + 3,
        macs_per_unit=7,
    )
    res = hessian_trace(model, (x, y), num_probes=64, groups=[hidden], seed=1)
    h, _ = exact_hessian(model, x, y)
    diag = torch.diagonal(h)
    w1 = diag[:24].view(6, 4)
    b1 = diag[24:30]
    w2 = diag[30:48].view(3, 6)
    exact_units = w1.sum(1) + b1 + w2.sum(0)
    assert abs(res["groups"]["0:out"] - float(exact_units.sum())) < 3 * res["groups_se"]["0:out"]
    est_units = torch.tensor(res["units"]["0:out"], dtype=exact_units.dtype)
    se_units = torch.tensor(res["units_se"]["0:out"], dtype=exact_units.dtype)
    assert bool(((est_units - exact_units).abs() < 3 * se_units).all()), (est_units, exact_units, se_units)
    # units are disjoint here, so they add up to the group
    assert float(est_units.sum()) == pytest.approx(res["groups"]["0:out"], rel=1e-6)
    assert abs(float(torch.trace(h)) - res["trace"]) < 3 * res["trace_se"]
    # a partition given as whole parameters works too
    part = hessian_trace(model, (x, y), num_probes=8, groups={"first": ["0.weight", "0.bias"]}, seed=1)
    assert part["groups"]["first"] == pytest.approx(
        part["per_tensor"]["0.weight"] + part["per_tensor"]["0.bias"]
    )
    with pytest.raises(ValueError, match="unknown parameter"):
        hessian_trace(model, (x, y), num_probes=2, groups={"bad": ["nope.weight"]})


class Square(nn.Module):
    """Outputs its 3×3 weight, flattened: with ``quad_loss`` the Hessian over its 9 entries is A."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.reshape(1, -1).expand(x.shape[0], -1)


def test_overlapping_slices_of_one_tensor_count_each_entry_once_per_unit():
    # unit j owns row j and column j of the same tensor (a layer feeding itself): entry (j, j) is in
    # both slices but is one entry. Hutch++ with a sketch as large as the space is exact.
    a = sym_matrix([9.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5], seed=11)
    units = tuple((j,) for j in range(3))
    g = Group("w:out", "neuron", "w", 3, (ParamSlice("w", 0, units), ParamSlice("w", 1, units)), 5, 0)
    res = hessian_trace(
        Square(), dummy_batch(), num_probes=30, method="hutchpp", groups=[g], loss_fn=quad_loss(a)
    )
    d = torch.diagonal(a).view(3, 3).double()
    exact_units = d.sum(1) + d.sum(0) - d.diagonal()
    np.testing.assert_allclose(res["units"]["w:out"], exact_units.numpy(), rtol=1e-4, atol=1e-4)
    assert res["groups"]["w:out"] == pytest.approx(float(d.sum()), rel=1e-4)


def test_micro_batching_does_not_change_the_loss_or_its_hessian():
    model = tiny_mlp()
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    vecs = [torch.randn_like(p) for p in model.parameters()]
    full = hvp(model, (x, y), vecs)
    # unequal halves: weighting by batch size is what keeps the mean loss unchanged
    split = hvp(model, [(x[:5], y[:5]), (x[5:], y[5:])], vecs)
    for a, b in zip(full, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    t_full = hessian_trace(model, (x, y), num_probes=4, seed=0)
    t_split = hessian_trace(model, [(x[:5], y[:5]), (x[5:], y[5:])], num_probes=4, seed=0)
    assert t_full["trace"] == pytest.approx(t_split["trace"], rel=1e-5)
    assert t_full["num_samples"] == t_split["num_samples"] == 12


def test_model_is_evaluated_in_eval_mode_and_restored():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 3))
    model.train()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    a = hessian_trace(model, (x, y), num_probes=3, seed=0)["trace"]
    b = hessian_trace(model, (x, y), num_probes=3, seed=0)["trace"]
    assert a == b  # dropout off: deterministic
    assert model.training
    model[3].eval()  # a submodule kept in eval (e.g. a frozen BatchNorm) must come back in eval
    for fn in (hessian_trace, top_eigenvalue, gauss_newton_top_eigenvalue):
        fn(model, (x, y), 2)
        assert model.training and model[1].training and not model[3].training, fn.__name__
    with pytest.raises(ValueError, match="unknown trace method"):
        hessian_trace(model, (x, y), method="exact")


class DictModel(nn.Module):
    """HF-style call convention: model(**inputs) returning an object with .logits."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, input_ids, attention_mask):
        h = (self.emb(input_ids) * attention_mask.unsqueeze(-1)).sum(1)
        return type("Out", (), {"logits": self.head(torch.tanh(h))})()


def test_dict_inputs_work_for_trace_and_gauss_newton():
    torch.manual_seed(0)
    model = DictModel()
    inputs = {"input_ids": torch.randint(0, 10, (6, 4)), "attention_mask": torch.ones(6, 4)}
    y = torch.randint(0, 2, (6,))
    res = hessian_trace(model, (inputs, y), num_probes=4)
    assert math.isfinite(res["trace"]) and set(res["per_tensor"]) == {
        "emb.weight",
        "head.weight",
        "head.bias",
    }
    gn = gauss_newton_top_eigenvalue(model, (inputs, y), iters=30)
    assert gn["eigenvalue"] > 0


class TinyAttention(nn.Module):
    """Uses fused scaled-dot-product attention, whose fast CPU/GPU kernels have no double backward."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, 2, 2).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))  # 2 heads
        return self.head(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 4).mean(1))


def test_attention_models_get_second_derivatives_and_a_symmetric_hessian():
    torch.manual_seed(0)
    model = TinyAttention()
    x, y = torch.randn(3, 5, 4), torch.randint(0, 2, (3,))
    u = [torch.randn_like(p) for p in model.parameters()]
    v = [torch.randn_like(p) for p in model.parameters()]
    hu, hv = hvp(model, (x, y), u), hvp(model, (x, y), v)
    # uᵀHv = vᵀHu: a real Hessian, not an approximation
    uhv = sum(float((a * b).sum()) for a, b in zip(u, hv, strict=True))
    vhu = sum(float((a * b).sum()) for a, b in zip(v, hu, strict=True))
    assert uhv == pytest.approx(vhu, rel=1e-4, abs=1e-6)
    assert math.isfinite(gauss_newton_top_eigenvalue(model, (x, y), iters=5)["eigenvalue"])


def test_hutchinson_diagonal_is_unbiased_for_the_exact_diagonal_and_restores_the_model():
    from prunekit.theory.hessian_diagonal import hutchinson_diagonal
    from prunekit.theory.modes import grad_scope

    model = tiny_mlp().double()
    torch.manual_seed(1)
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    H, _ = exact_hessian(model, x, y)
    exact = torch.diagonal(H)
    frozen = model[2].bias
    frozen.requires_grad_(False)
    model.train()
    tensors = [p for _, p in model.named_parameters()]
    # two batches of 6: the sum over batches of n_b * diag(H_b) divided by N is diag H of the mean loss
    sums, seen = hutchinson_diagonal(model, [(x[:6], y[:6]), (x[6:], y[6:])], tensors, num_probes=200, seed=2)
    assert seen == 12
    est = torch.cat([s.reshape(-1) for s in sums]) / seen
    # entry i of one probe z ⊙ H_b z has variance Σ_{j≠i} H_b,ij²: the estimate's standard error per entry
    var = torch.zeros_like(exact)
    for sl in (slice(0, 6), slice(6, 12)):
        Hb, _ = exact_hessian(model, x[sl], y[sl])
        var += 0.25 * (Hb.square().sum(1) - torch.diagonal(Hb).square()) / 200
    assert ((est - exact).abs() <= 5 * var.sqrt() + 1e-12).all()
    assert not torch.equal(est, exact)  # a Monte-Carlo estimate, not the exact diagonal
    again, _ = hutchinson_diagonal(model, [(x[:6], y[:6]), (x[6:], y[6:])], tensors, num_probes=200, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(sums, again, strict=True))  # deterministic for a seed
    assert model.training and not frozen.requires_grad  # modes and flags restored
    with torch.no_grad(), grad_scope(model, [frozen]):
        assert torch.is_grad_enabled() and frozen.requires_grad and not model.training
    assert not frozen.requires_grad and model.training
