"""Extreme eigenvalues of a symmetric operator known only by its matrix-vector product.

Used by :mod:`prunekit.theory.hessian` for the top eigenvalue of the Hessian and of the Gauss-Newton
matrix. The operator acts on flat vectors; :func:`flat` / :func:`unflat` convert to and from the list of
per-parameter tensors the Hessian code works with.

- :func:`power_top` — power iteration: the Rayleigh quotient of the dominant (largest-*magnitude*)
  eigenvector;
- :func:`lanczos_top` — Lanczos with full reorthogonalisation: the largest *algebraic* Ritz value;
- :func:`top_eigenvalue_of` — either, from a seeded random start vector, with a progress bar.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

MatVec = Callable[[Tensor], Tensor]


def flat(vs: Sequence[Tensor]) -> Tensor:
    """One flat vector from a list of tensors (in order)."""
    return torch.cat([v.reshape(-1) for v in vs])


def unflat(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``vec`` shaped like the tensors of ``like`` (the inverse of :func:`flat`)."""
    out, i = [], 0
    for p in like:
        out.append(vec[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out


def power_top(mv: MatVec, v: Tensor, iters: int, tol: float) -> dict[str, Any]:
    """Power iteration: the Rayleigh quotient of the dominant (largest-magnitude) eigenvector."""
    v = v / v.norm()
    lam_prev, lam, converged, done = math.nan, math.nan, False, 0
    for it in range(1, iters + 1):
        done = it
        w = mv(v)
        lam = float(torch.dot(v.double(), w.double()))
        norm = w.norm()
        if norm == 0:  # v is in the null space: the operator is 0 along every direction tried
            converged = True
            break
        v = w / norm
        if abs(lam - lam_prev) <= tol * max(abs(lam), 1e-12):
            converged = True
            break
        lam_prev = lam
    return {"eigenvalue": lam, "iters": done, "converged": converged, "method": "power", "vector": v}


def lanczos_top(mv: MatVec, v: Tensor, iters: int, tol: float) -> dict[str, Any]:
    """Lanczos with full reorthogonalisation: the largest Ritz value of the tridiagonal matrix."""
    basis = [v / v.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    lam_prev, lam, converged, it = math.nan, math.nan, False, 0
    for it in range(1, iters + 1):
        w = mv(basis[-1])
        alphas.append(float(torch.dot(w.double(), basis[-1].double())))
        for _ in range(2):  # full reorthogonalisation, twice: round-off otherwise ghosts eigenvalues
            for q in basis:
                w = w - torch.dot(w, q) * q
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        evals, evecs = np.linalg.eigh(t)
        lam, ritz = float(evals[-1]), evecs[:, -1]
        beta = float(w.norm())
        if abs(lam - lam_prev) <= tol * max(abs(lam), 1e-12) or beta <= 1e-10 * max(abs(lam), 1e-30):
            converged = True  # Ritz value settled, or an invariant subspace was found (exact)
            break
        lam_prev = lam
        if it == iters or it >= v.numel():
            converged = it >= v.numel()
            break
        betas.append(beta)
        basis.append(w / beta)
    vector = torch.stack(basis[: len(ritz)], dim=1) @ torch.as_tensor(ritz, dtype=basis[0].dtype)
    return {"eigenvalue": lam, "iters": it, "converged": converged, "method": "lanczos", "vector": vector}


SOLVERS: dict[str, Callable[[MatVec, Tensor, int, float], dict[str, Any]]] = {
    "power": power_top,
    "lanczos": lanczos_top,
}


def top_eigenvalue_of(
    mv: MatVec,
    size: int,
    iters: int,
    tol: float,
    seed: int,
    method: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    start: Tensor | None = None,
    return_vector: bool = False,
) -> dict[str, Any]:
    """The top eigenvalue of the operator ``mv`` on vectors of ``size`` entries: {eigenvalue, iters,
    converged, method} (and its unit eigenvector estimate as ``vector`` with ``return_vector``). The start vector is ``start`` if given, else standard normal from ``seed`` (drawn
    on the CPU, so the same seed gives the same start on every device)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    solver = SOLVERS.get(method)
    if solver is None:
        raise ValueError(f"unknown eigenvalue method {method!r}; choose 'power' or 'lanczos'")
    if start is not None:
        if start.shape != (size,) or not torch.isfinite(start).all() or float(start.norm()) == 0:
            raise ValueError(f"start must be a finite, non-zero vector of {size} entries")
        v0 = start.detach().to(device, dtype)
    else:
        v0 = torch.randn(size, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    bar = tqdm(total=iters, desc=f"top eigenvalue ({method})", disable=not sys.stderr.isatty(), leave=False)

    def counted(x: Tensor) -> Tensor:
        bar.update()
        return mv(x)

    try:
        out = solver(counted, v0, iters, tol)
    finally:
        bar.close()
    vector = out.pop("vector")
    if return_vector:
        out["vector"] = vector
    return out
