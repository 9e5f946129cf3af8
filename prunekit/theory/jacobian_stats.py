"""What else the logits' Jacobian gives while :func:`prunekit.theory.ntk.ntk_gram` streams it.

Building the NTK Gram already computes J, the Jacobian of the logits (n samples × k outputs) with respect
to every trainable parameter, one block of tensors at a time. Three more quantities of the same J are
nearly free, and :func:`prunekit.theory.estimate.estimate` uses them instead of Monte-Carlo probes:

- the per-entry NTK diagonal Σ_{i,c} J_ic[e]²: summed over a group's or unit's entries it is that group's
  NTK trace *exactly*, the quantity :func:`prunekit.theory.ntk.group_ntk_traces` estimates by Hutchinson;
- the per-entry diagonal of the Gauss-Newton matrix of the mean cross-entropy,
  G = (1/n) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i, so diag G[e] = (1/n) Σ_i (Σ_c p_ic J_ic[e]² − (Σ_c p_ic J_ic[e])²)
  with p_i the softmax of sample i's logits. The Hessian is H = G + R, where R = (1/n) Σ_{i,c} r_ic ∇²f_ic
  weighs the logits' own curvature by the residuals r = p − onehot(y); near a minimum G carries most of H,
  so Hutchinson only has to estimate the small remainder R (:func:`prunekit.theory.hessian.hessian_trace`
  with ``known_diagonal`` and :func:`residual_loss`). Under data parallelism each rank passes the
  probabilities of its own samples and ``total_samples``; the diagonals are then summed over ranks;
- when J fits in ``keep_elements`` entries, J itself, for exact products G v in two matrix products
  (:meth:`JacobianStats.gn_matvec`): the top Gauss-Newton eigenvalue by Lanczos then costs next to nothing.

Only whole tensors are handled (no ``param_filter``), and the samples must be independent (eval mode).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

_SCRATCH_ENTRIES = 1 << 21  # 8 MiB of float32: squares of a few samples' rows at a time


def residual_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """A loss whose Hessian in the parameters is R, the part of the cross-entropy Hessian that is not G.

    Σ_c r_ic f_ic with the residuals r = softmax(f) − onehot(y) held constant: its gradient equals the
    cross-entropy's, and because it is linear in the logits its Hessian has no Gauss-Newton term.
    """
    r = (F.softmax(logits.detach().float(), dim=-1) - F.one_hot(labels, logits.shape[-1]).float()).to(
        logits.dtype
    )
    return (logits * r).sum(dim=-1).mean()


class JacobianStats:
    """A ``ntk_gram(on_rows=...)`` callback that accumulates per-entry NTK and Gauss-Newton diagonals.

    ``params``: the trainable parameters in ``ntk_gram``'s order (name → tensor); ``probs``: the softmax of
    the logits of the same n samples (n × k), or None to skip the Gauss-Newton parts. ``keep_elements``:
    keep J (for :meth:`gn_matvec`) when it has at most this many entries in total.
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        probs: Tensor | None,
        keep_elements: int = 0,
        total_samples: int | None = None,
    ):
        self.shapes = {name: p.shape for name, p in params.items()}
        self.offsets: dict[str, int] = {}
        total = 0
        for name, p in params.items():
            self.offsets[name] = total
            total += p.numel()
        self.size = total
        self.probs = None if probs is None else probs.detach().to(torch.float32)
        self.n = None if probs is None else probs.shape[0]  # this rank's samples (those of ``probs``)
        self.total_samples = total_samples or self.n  # the mean loss is over all ranks' samples
        k = 0 if probs is None else probs.shape[1]
        self.keep = probs is not None and self.n * k * total <= keep_elements
        self.ntk = torch.zeros(total, dtype=torch.float64)
        self.gn = torch.zeros(total, dtype=torch.float64) if probs is not None else None
        self.kept: list[tuple[int, int, int, int, Tensor]] = []  # (col_lo, col_hi, lo, hi, rows)

    def __call__(self, lo: int, hi: int, rows: Mapping[str, Tensor]) -> None:
        """Add the rows of samples lo..hi (name → (hi−lo)·k × numel, whole tensors)."""
        for name, r in rows.items():
            if name not in self.offsets or r.shape[1] != self.shapes[name].numel():
                raise ValueError("JacobianStats needs whole parameter tensors (no param_filter)")
            self._add(self.offsets[name], lo, hi, r)

    def _add(self, col_lo: int, lo: int, hi: int, rows: Tensor) -> None:
        col_hi = col_lo + rows.shape[1]
        rows32 = rows.to(torch.float32)
        m = rows.shape[1]
        k = rows.shape[0] // (hi - lo)
        ntk = torch.zeros(m, dtype=torch.float64)
        gn = torch.zeros(m, dtype=torch.float64)
        # whole samples at a time through one reused scratch buffer: squaring the full block would make a
        # block-sized temporary, and fresh memory costs more to fault in than the arithmetic
        step = max(1, _SCRATCH_ENTRIES // (k * m))
        scratch = torch.empty(min(step, hi - lo) * k, m, dtype=torch.float32, device=rows.device)
        for s0 in range(0, hi - lo, step):
            s1 = min(s0 + step, hi - lo)
            chunk = rows32[s0 * k : s1 * k]
            sq = torch.square(chunk, out=scratch[: chunk.shape[0]])
            if self.probs is None:
                ntk += sq.sum(0).double().cpu()
                continue
            # reductions as matrix products (BLAS): Σ_ic J², Σ_ic p J², and per sample Σ_c p J
            p = self.probs[lo + s0 : lo + s1].to(rows.device)  # (b, k)
            weights = torch.stack([torch.ones_like(p).reshape(-1), p.reshape(-1)])  # (2, b·k)
            both = (weights @ sq).double().cpu()  # (2, m)
            per_sample = torch.bmm(p.unsqueeze(1), chunk.reshape(s1 - s0, k, m)).squeeze(1)  # (b, m)
            ntk += both[0]
            gn += both[1] - per_sample.square().sum(0).double().cpu()
        self.ntk[col_lo:col_hi] += ntk
        if self.probs is None:
            return
        self.gn[col_lo:col_hi] += gn / self.total_samples
        if self.keep:
            self.kept.append((col_lo, col_hi, lo, hi, rows32))

    def per_tensor(self, which: str = "ntk") -> dict[str, Tensor]:
        """The per-entry diagonal ``"ntk"`` or ``"gn"`` as one float64 tensor per parameter."""
        vec = self.ntk if which == "ntk" else self.gn
        if vec is None:
            raise ValueError("no Gauss-Newton diagonal: JacobianStats was built without probs")
        return {
            name: vec[o : o + self.shapes[name].numel()].view(self.shapes[name])
            for name, o in self.offsets.items()
        }

    @property
    def has_jacobian(self) -> bool:
        return self.keep and bool(self.kept)

    def consolidate(self) -> None:
        """Merge the kept blocks into one (samples·k × P) matrix (for gathering across ranks)."""
        if not self.has_jacobian:
            return
        k = self.probs.shape[1]
        whole = torch.zeros(self.n * k, self.size, dtype=torch.float32, device=self.kept[0][4].device)
        for c0, c1, lo, hi, rows in self.kept:
            whole[lo * k : hi * k, c0:c1] = rows
        self.kept = [(0, self.size, 0, self.n, whole)]

    def jacobian(self) -> Tensor:
        """The kept Jacobian, rows (sample, logit), after :meth:`consolidate`."""
        self.consolidate()
        if not self.has_jacobian:
            raise ValueError("the Jacobian was not kept (raise keep_elements)")
        return self.kept[0][4]

    def gn_matvec(self, v: Tensor) -> Tensor:
        """G v for a flat vector over the trainable parameters, from the kept Jacobian (two products)."""
        if not self.has_jacobian:
            raise ValueError("the Jacobian was not kept (raise keep_elements); use hessian.gnvp instead")
        k = self.probs.shape[1]
        v32 = v.to(torch.float32)
        u = torch.zeros(self.n, k, dtype=torch.float32)
        for c0, c1, lo, hi, rows in self.kept:
            u[lo:hi] += (rows @ v32[c0:c1].to(rows.device)).reshape(hi - lo, k).cpu()
        p = self.probs.cpu()
        w = (p * u - p * (p * u).sum(1, keepdim=True)) / self.total_samples  # H_out u of the mean loss
        out = torch.zeros(self.size, dtype=torch.float32)
        for c0, c1, lo, hi, rows in self.kept:
            out[c0:c1] += (rows.T @ w[lo:hi].reshape(-1).to(rows.device)).cpu()
        return out.to(v.dtype)
