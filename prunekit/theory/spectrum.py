"""Spectral summaries of a kernel matrix (the empirical NTK): C_arch and its companions.

The kernel is eigendecomposed in float64 and normalised to mean eigenvalue 1 (μ = λ / mean λ), so the
summaries do not depend on the scale of the logits or the number of parameters:

- ``d_lambda`` = Σ μ/(μ+λ), the effective degrees of freedom at ridge λ (C_arch; DESIGN.md section 3);
- ``lambda_max`` (raw) and ``lambda_max_normalized`` = λ_max / mean λ;
- ``effective_rank_entropy`` = exp(−Σ p log p), p = μ/Σμ (Roy & Vetterli 2007), and
  ``effective_rank_participation`` = (Σμ)² / Σμ² = tr²/‖Θ‖_F²;
- ``decay_exponent`` α of a power law μ_i ∝ i^(−α), least squares of log μ_i on log i over the top part
  of the spectrum.

The raw condition number is never reported: on a rank-deficient kernel (n·k > P, or dead units) it is
infinite or rounding noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_psd(eigenvalues: Tensor, rtol: float = 1e-6) -> None:
    """Raise ValueError if an eigenvalue is clearly negative (below −rtol·max|λ|, or −rtol if all are tiny)."""
    scale = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    lo = float(eigenvalues.min()) if eigenvalues.numel() else 0.0
    if lo < -rtol * max(scale, 1e-300):
        raise ValueError(
            f"kernel is not positive semi-definite: smallest eigenvalue {lo:.3e} against largest |λ| {scale:.3e} "
            f"(tolerance {rtol:g} relative); a Gram J Jᵀ cannot have one — build it as J Jᵀ in float64 "
            f"(ntk_gram(dtype=torch.float64)) and do not subtract kernels computed at different weights"
        )


def ntk_spectrum(
    gram: Tensor,
    ridge: float = 1e-2,
    psd_rtol: float = 1e-6,
    decay_fraction: float = 0.5,
    return_eigenvalues: bool = False,
) -> dict[str, object]:
    """Spectral summaries of a symmetric PSD kernel (see the module docstring). JSON-serialisable floats.

    ``decay_fraction``: the share of the positive eigenvalues (largest first, at least 2) the power law is
    fitted on. ``return_eigenvalues`` adds the normalised eigenvalues (descending) as a list.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square matrix; got shape {tuple(gram.shape)}")
    if ridge <= 0:
        raise ValueError(f"ridge must be positive; got {ridge}")
    if not 0 < decay_fraction <= 1:
        raise ValueError(f"decay_fraction must be in (0, 1]; got {decay_fraction}")
    g = gram.detach().to(torch.float64).cpu()
    if not torch.isfinite(g).all():
        raise ValueError("gram has NaN or infinite entries")
    asym = float((g - g.T).abs().max())
    scale = float(g.abs().max())
    if asym > 1e-6 * max(scale, 1e-300):
        raise ValueError(f"gram is not symmetric (max |G − Gᵀ| = {asym:.3e} against max |G| = {scale:.3e})")
    lam = torch.linalg.eigvalsh((g + g.T) / 2).flip(0)  # descending
    check_psd(lam, psd_rtol)
    lam = lam.clamp_min(0)  # rounding-level negatives
    n = lam.numel()
    trace = float(lam.sum())
    out: dict[str, object] = {"n": n, "ridge": ridge, "trace": float(g.diagonal().sum())}
    if trace <= 0:  # an all-zero kernel (e.g. everything masked): no degrees of freedom
        out.update(
            mean_eigenvalue=0.0,
            d_lambda=0.0,
            lambda_max=0.0,
            lambda_max_normalized=float("nan"),
            effective_rank_entropy=0.0,
            effective_rank_participation=0.0,
            decay_exponent=float("nan"),
            decay_fit_points=0,
        )
        if return_eigenvalues:
            out["eigenvalues_normalized"] = [0.0] * n
        return out
    mean = trace / n
    mu = lam / mean
    p = mu / mu.sum()
    pos = p[p > 0]
    alpha, points = decay_exponent(mu, decay_fraction)
    out.update(
        mean_eigenvalue=mean,
        d_lambda=float((mu / (mu + ridge)).sum()),
        lambda_max=float(lam[0]),
        lambda_max_normalized=float(mu[0]),
        effective_rank_entropy=math.exp(float(-(pos * pos.log()).sum())),
        effective_rank_participation=float(mu.sum() ** 2 / mu.square().sum()),
        decay_exponent=alpha,
        decay_fit_points=points,
    )
    if return_eigenvalues:
        out["eigenvalues_normalized"] = mu.tolist()
    return out


def decay_exponent(mu: Tensor, fraction: float = 0.5, floor: float = 1e-12) -> tuple[float, int]:
    """α of μ_i ∝ i^(−α) fitted on the top ``fraction`` of eigenvalues above ``floor``·μ_max; (α, points).

    Eigenvalues at rounding level are left out (their logs are noise). NaN if fewer than 2 points remain.
    """
    mu = mu.to(torch.float64).sort(descending=True).values
    positive = mu[mu > floor * float(mu[0])] if mu.numel() and mu[0] > 0 else mu[:0]
    m = max(2, int(math.ceil(fraction * positive.numel())))
    top = positive[:m]
    if top.numel() < 2:
        return float("nan"), int(top.numel())
    x = torch.arange(1, top.numel() + 1, dtype=torch.float64).log()
    y = top.log()
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / xc.square().sum())
    return -slope, int(top.numel())
