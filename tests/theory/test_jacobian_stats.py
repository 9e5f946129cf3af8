"""The Jacobian pass: exact NTK and Gauss-Newton diagonals, G v, and H = G + R, against explicit matrices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from prunekit.structure import Group, ParamSlice
from prunekit.theory.eigen import top_eigenvalue_of
from prunekit.theory.hessian import hessian_trace
from prunekit.theory.jacobian_stats import JacobianStats, residual_loss
from prunekit.theory.ntk import ntk_gram


def smooth_mlp(seed: int = 0) -> nn.Module:
    """tanh makes every weight tensor's own Hessian block non-zero, so R is not trivially block-free."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)).eval()


def data(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def explicit(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Full Jacobian (n·k × P), G and H of the mean cross-entropy, in float64."""
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, s in zip(names, shapes, strict=True):
            out[name] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return out

    def logits(v: torch.Tensor) -> torch.Tensor:
        return functional_call(model, unflat(v), (x.double(),))

    def loss(v: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits(v), y)

    jac = jacrev(logits)(flat0).reshape(-1, flat0.numel())  # rows (sample, logit)
    p = torch.softmax(logits(flat0), -1).detach()
    h_out = torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in p]) / len(x)
    gn = jac.T @ h_out @ jac
    hess = torch.autograd.functional.hessian(loss, flat0)
    model.float()
    return jac, p, gn, hess


def run_pass(model: nn.Module, x: torch.Tensor, keep: int = 2**20, block_elements: int = 2**26):
    params = dict(model.named_parameters())
    with torch.no_grad():
        probs = torch.softmax(model(x), -1)
    stats = JacobianStats(params, probs, keep_elements=keep)
    gram = ntk_gram(
        model, (x, None), block_elements=block_elements, matmul_dtype=torch.float32, on_rows=stats
    )
    return gram, stats


@pytest.mark.parametrize("block_elements", [2**26, 24 * 4 * 40])  # one block, and blocks split by samples
def test_diagonals_and_gauss_newton_products_are_exact(block_elements: int) -> None:
    model = smooth_mlp()
    x, y = data()
    jac, p, gn, _ = explicit(model, x, y)
    gram, stats = run_pass(model, x, block_elements=block_elements)
    ntk_diag = torch.cat([t.reshape(-1) for t in stats.per_tensor("ntk").values()])
    gn_diag = torch.cat([t.reshape(-1) for t in stats.per_tensor("gn").values()])
    torch.testing.assert_close(ntk_diag, jac.square().sum(0), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gn_diag, torch.diagonal(gn), rtol=1e-4, atol=1e-7)
    # the float32 block products, accumulated in float64, give the traced Gram
    jt = jac.reshape(len(x), 4, -1)
    torch.testing.assert_close(gram, torch.einsum("icm,jcm->ij", jt, jt), rtol=1e-4, atol=1e-6)
    v = torch.randn(jac.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(stats.gn_matvec(v.float()).double(), gn @ v, rtol=1e-4, atol=1e-6)
    # top eigenvalue of G by Lanczos on the kept Jacobian
    top = top_eigenvalue_of(stats.gn_matvec, stats.size, 60, 1e-8, 0, "lanczos", return_vector=True)
    assert top["eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(gn)[-1]), rel=1e-4)
    assert top["vector"].shape == (stats.size,)


def test_jacobian_is_only_kept_when_it_fits() -> None:
    model = smooth_mlp()
    x, _ = data()
    _, stats = run_pass(model, x, keep=10)
    assert not stats.has_jacobian
    with pytest.raises(ValueError, match="raise keep_elements"):
        stats.gn_matvec(torch.zeros(stats.size))
    no_probs = JacobianStats(dict(model.named_parameters()), None)
    with pytest.raises(ValueError, match="without probs"):
        no_probs.per_tensor("gn")


def test_residual_loss_hessian_is_h_minus_g() -> None:
    model = smooth_mlp()
    x, y = data()
    _, _, gn, hess = explicit(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    model.double()

    def res(v: torch.Tensor) -> torch.Tensor:
        ps, i = {}, 0
        for name, p in zip(names, model.parameters(), strict=True):
            ps[name] = v[i : i + p.numel()].view(p.shape)
            i += p.numel()
        return residual_loss(functional_call(model, ps, (x.double(),)), y)

    r = torch.autograd.functional.hessian(res, flat0)
    model.float()
    torch.testing.assert_close(r, hess - gn, rtol=1e-6, atol=1e-8)
    assert float(torch.diagonal(hess - gn).abs().sum()) > 1e-3  # a real remainder: the split is tested


def fitted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    """Near a minimum of the training loss, where the residuals, and so R, are small."""
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_gauss_newton_split_trace_is_unbiased_and_far_less_noisy() -> None:
    x, y = data(n=48)
    model = fitted(smooth_mlp(), x, y)
    _, _, _, hess = explicit(model, x, y)
    _, stats = run_pass(model, x)
    diag = torch.diagonal(hess)
    sizes = [p.numel() for p in model.parameters()]
    exact_blocks = [float(b.sum()) for b in torch.split(diag, sizes)]
    w2 = model[2].weight
    rows = tuple((i,) for i in range(6))
    groups = [Group("hidden2", "neuron", "2", 6, (ParamSlice("2.weight", 0, rows),), 7, 7)]
    kwargs = {"num_probes": 40, "seed": 4, "groups": groups}
    split = hessian_trace(
        model,
        (x, y),
        loss_fn=residual_loss,
        known_diagonal=list(stats.per_tensor("gn").values()),
        **kwargs,
    )
    plain = hessian_trace(model, (x, y), **kwargs)
    assert abs(split["trace"] - float(diag.sum())) < 4 * split["trace_se"] + 1e-6
    for name, exact in zip(split["per_tensor"], exact_blocks, strict=True):
        assert abs(split["per_tensor"][name] - exact) < 4 * split["per_tensor_se"][name] + 1e-6
    unit_exact = diag[sizes[0] + sizes[1] : sizes[0] + sizes[1] + w2.numel()].reshape(w2.shape).sum(1)
    got, se = torch.tensor(split["units"]["hidden2"]), torch.tensor(split["units_se"]["hidden2"])
    assert ((got - unit_exact.float()).abs() <= 4 * se + 1e-6).all()
    assert split["trace_se"] < plain["trace_se"] / 2  # 8x on the trained quickstart CNN (results/)
    # each probe on its own random half of the samples: still unbiased, a bit noisier
    half = hessian_trace(
        model,
        (x, y),
        loss_fn=residual_loss,
        known_diagonal=list(stats.per_tensor("gn").values()),
        samples_per_probe=24,
        **kwargs,
    )
    assert half["samples_per_probe"] == 24
    assert abs(half["trace"] - float(diag.sum())) < 4 * half["trace_se"] + 1e-6
    assert half["trace"] != split["trace"]
    with pytest.raises(ValueError, match="samples_per_probe must be a positive"):
        hessian_trace(model, (x, y), num_probes=2, samples_per_probe=0)
