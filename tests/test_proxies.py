"""Zero-cost proxies against their papers' definitions, computed by hand (numpy) on a two-layer network."""

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.theory.proxies import JACOB_COV_K, grasp, jacob_cov, snip, synflow


@pytest.fixture
def net_and_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    return net, x, y


def _hand_grads(W1, W2, x, y):
    """Gradients of the mean cross-entropy of W2·relu(W1·x), by the chain rule."""
    pre = x @ W1.T
    h = np.maximum(pre, 0)
    z = h @ W2.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d = (p - np.eye(2)[y]) / len(x)
    gW2 = d.T @ h
    dpre = (d @ W2) * (pre > 0)
    gW1 = dpre.T @ x
    return gW1, gW2


def _weights(net):
    return net[0].weight.detach().numpy().copy(), net[2].weight.detach().numpy().copy()


def test_snip_is_sum_of_abs_weight_times_gradient(net_and_batch):
    net, x, y = net_and_batch
    W1, W2 = _weights(net)
    g1, g2 = _hand_grads(W1, W2, x.numpy(), y.numpy())
    want = np.abs(W1 * g1).sum() + np.abs(W2 * g2).sum()
    assert snip(net, x, y) == pytest.approx(want, rel=1e-9)


def test_grasp_is_minus_weight_times_hessian_gradient(net_and_batch):
    net, x, y = net_and_batch
    W1, W2 = _weights(net)
    xn, yn = x.numpy(), y.numpy()
    g1, g2 = _hand_grads(W1, W2, xn, yn)
    eps = 1e-6  # H g by central differences of the hand gradient along g
    p1, p2 = _hand_grads(W1 + eps * g1, W2 + eps * g2, xn, yn)
    m1, m2 = _hand_grads(W1 - eps * g1, W2 - eps * g2, xn, yn)
    hg1, hg2 = (p1 - m1) / (2 * eps), (p2 - m2) / (2 * eps)
    want = -(W1 * hg1).sum() - (W2 * hg2).sum()
    assert grasp(net, x, y) == pytest.approx(want, rel=1e-5)
    assert abs(want) > 1e-6  # the check is not trivially 0 = 0


def test_synflow_of_a_bias_free_two_layer_net_is_twice_the_path_sum(net_and_batch):
    net, x, _ = net_and_batch
    W1, W2 = _weights(net)
    R = np.ones(2) @ np.abs(W2) @ np.abs(W1) @ np.ones(4)  # 1ᵀ|W2||W1|1: every path's |weight| product
    # ∂R/∂|W1|_ij = (1ᵀ|W2|)_i, so Σ|W1|⊙∂R/∂|W1| = R; likewise for W2
    assert synflow(net, x) == pytest.approx(2 * R, rel=1e-12)
    assert torch.equal(net[0].weight, torch.from_numpy(W1))  # weights untouched (signs kept)


def test_jacob_cov_from_hand_input_jacobians(net_and_batch):
    net, x, _ = net_and_batch
    W1, W2 = _weights(net)
    xn = x.numpy()
    rows = [W1.T @ ((W1 @ xi > 0) * (W2.T @ np.ones(2))) for xi in xn]  # ∂Σ_c f_c/∂x
    assert all(np.ptp(r) > 0 for r in rows)  # no dead input: np.corrcoef is defined
    corr = np.corrcoef(np.stack(rows))
    lam = np.linalg.eigvalsh(corr)
    lam = np.clip(lam, 0, None)
    want = -np.sum(np.log(lam + JACOB_COV_K) + 1.0 / (lam + JACOB_COV_K))
    assert jacob_cov(net, x) == pytest.approx(want, rel=1e-6)


def test_synflow_turns_batchnorm_into_a_positive_linear_map():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)
        net[1].weight.copy_(torch.tensor([-2.0, 0.5]))
        net[1].bias.zero_()
    before = net[1].running_mean.clone()
    W1, W2 = net[0].weight.detach().abs().double(), net[2].weight.detach().abs().double()
    gamma = torch.tensor([2.0, 0.5], dtype=torch.float64) / np.sqrt(1 + net[1].eps)
    R = float(
        torch.ones(1, dtype=torch.float64) @ W2 @ torch.diag(gamma) @ W1 @ torch.ones(3, dtype=torch.float64)
    )
    # the BN weight is a 1-D parameter: not scored, but scaling the path; both Linear weights give R each
    assert synflow(net, torch.ones(2, 3)) == pytest.approx(2 * R, rel=1e-9)
    assert torch.equal(net[1].running_mean, before)
