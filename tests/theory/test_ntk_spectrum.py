"""Spectral summaries of a kernel (prunekit.theory.spectrum) on known spectra, and the PSD check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.theory.ntk import ntk_gram
from prunekit.theory.spectrum import decay_exponent, ntk_spectrum

D = torch.float64


def test_spectrum_on_a_known_spectrum() -> None:
    n = 40
    lam = 5.0 * torch.arange(1, n + 1, dtype=D) ** -2.0
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=D, generator=torch.Generator().manual_seed(0)))
    gram = q @ torch.diag(lam) @ q.T
    s = ntk_spectrum(gram, ridge=1e-2, decay_fraction=1.0)
    mu = lam / lam.mean()
    assert s["trace"] == pytest.approx(float(lam.sum()), rel=1e-10)
    assert s["d_lambda"] == pytest.approx(float((mu / (mu + 1e-2)).sum()), rel=1e-10)
    assert s["lambda_max"] == pytest.approx(5.0, rel=1e-10)
    assert s["lambda_max_normalized"] == pytest.approx(float(mu[0]), rel=1e-10)
    p = mu / mu.sum()
    assert s["effective_rank_entropy"] == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-10)
    assert s["effective_rank_participation"] == pytest.approx(float(mu.sum() ** 2 / (mu**2).sum()), rel=1e-10)
    assert s["decay_exponent"] == pytest.approx(2.0, rel=1e-8)
    assert "condition_number" not in s
    # identity: every eigenvalue is the mean, d_λ = n/(1+λ), effective ranks = n
    eye = ntk_spectrum(3 * torch.eye(10, dtype=D), ridge=0.5)
    assert eye["d_lambda"] == pytest.approx(10 / 1.5)
    assert eye["effective_rank_entropy"] == pytest.approx(10) and eye[
        "effective_rank_participation"
    ] == pytest.approx(10)
    alpha, points = decay_exponent(torch.tensor([1.0, 0.5, 1e-20], dtype=D), fraction=1.0)
    assert points == 2 and alpha == pytest.approx(1.0)  # the rounding-level eigenvalue is left out


def test_spectrum_psd_check() -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=D, generator=torch.Generator().manual_seed(1)))
    bad = q @ torch.diag(torch.tensor([3.0, 2, 1, 0.5, 0, -0.3], dtype=D)) @ q.T
    with pytest.raises(ValueError, match="not positive semi-definite"):
        ntk_spectrum(bad)
    tiny_neg = q @ torch.diag(torch.tensor([3.0, 2, 1, 0.5, 0, -1e-12], dtype=D)) @ q.T
    assert ntk_spectrum(tiny_neg)["n"] == 6  # rounding-level negatives are accepted
    with pytest.raises(ValueError, match="not symmetric"):
        ntk_spectrum(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=D))
    zero = ntk_spectrum(torch.zeros(4, 4, dtype=D))
    assert zero["d_lambda"] == 0.0 and zero["trace"] == 0.0


def test_spectrum_of_a_real_ntk_is_consistent() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(D)
    gram = ntk_gram(model, torch.randn(12, 4, dtype=D))
    s = ntk_spectrum(gram)
    assert s["trace"] == pytest.approx(float(gram.trace()))
    assert (
        0 < s["d_lambda"] <= 12
        and 1 <= s["effective_rank_participation"] <= s["effective_rank_entropy"] + 1e-9
    )
