"""The NTK and Gauss-Newton quantities of a causal LM on k random projections of its next-token logits.

A causal LM has V outputs (the vocabulary) at every position: the Jacobian of all of them on a probe of m
(sequence, position) pairs has m·V rows, 4·10⁶ for m = 2048 positions of a 2048-token vocabulary, and each
row is a backward pass. The sketch (the "random projection" route) replaces the V logits z of a position by
k projections y = S z, with one S (k × V, entries i.i.d. with E[Sᵀ S] = I: Rademacher ±1/√k, or Gaussian
N(0, 1/k)) drawn from the seed and shared by every position, so that

- the NTK: for any block of parameters, E_S[Σ_c ∇y_c ∇y_cᵀ] = Σ_v ∇z_v ∇z_vᵀ. So the sketched Gram
  Θ̂_ij = Σ_c ⟨∇y_ic, ∇y_jc⟩ (S shared: also unbiased off the diagonal), its trace, the per-entry NTK
  diagonal and so every per-group / per-unit trace are unbiased estimates of the full (all-V) quantities;
- the Gauss-Newton matrix of the mean token cross-entropy, G = (1/m) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i:
  diag p − p pᵀ = Mᵀ M with M z = √p ⊙ (z − pᵀz) (p the softmax, held fixed), so the k further outputs
  S M z give an unbiased sketch of G's diagonal, its trace and the layer-normalised T.

**Tolerance.** Each sketch row c is an independent unbiased estimate k·s_cᵀ A s_c of a trace tr A (A the
V × V output-space kernel Σ_i J_i J_iᵀ, or its Gauss-Newton counterpart). Its relative standard error
is √(2/(k·r)) for Gaussian rows, less for Rademacher ones (their diagonal terms are exact), where
r = (tr A)² / ‖A‖_F² ≥ 1 is A's effective rank: at worst (r = 1) √(2/k), 0.35 at k = 16. The standard
error is estimated from the k rows themselves (``ntk_trace_se``, ``T_se``); with S fixed by the seed,
masked variants of one model share it (common random numbers), so their *differences* are far less
noisy than either. The NTK spectrum summaries (C_arch = d_λ of the normalised Gram) are nonlinear in the
Gram: consistent as k grows, not unbiased. ``kind="exact"`` takes S = I (all V logits): the exact
quantities, the reference the tests and experiments/lm_estimator_cost.py check the sketch against.

Both halves come from one Jacobian pass of 2k outputs per position (the engines of
:mod:`prunekit.theory.ntk_jacobian`, streamed over parameter blocks as :func:`prunekit.theory.ntk.ntk_gram`
does); the Gram is accumulated from the NTK half only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.theory.modes import eval_mode
from prunekit.theory.ntk_jacobian import JacobianRows, blocks

SKETCHES = ("rademacher", "gaussian", "exact")


def projection(vocab: int, k: int, kind: str = "rademacher", seed: int = 0) -> Tensor:
    """The (k × V) float32 sketch with E[Sᵀ S] = I, drawn on the CPU from ``seed``; ``"exact"``: I (k = V)."""
    if kind not in SKETCHES:
        raise ValueError(f"sketch '{kind}' is not one of {', '.join(SKETCHES)}")
    if kind == "exact":
        return torch.eye(vocab)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"sketch_dim={k!r} must be a positive integer (2 or more for a standard error)")
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(k, vocab, generator=gen) / math.sqrt(k)
    return (torch.randint(0, 2, (k, vocab), generator=gen) * 2 - 1).float() / math.sqrt(k)


class SketchedOutputs(nn.Module):
    """A causal LM seen as a model of 2k outputs per (sequence, position) sample: ``[S z, S M z]``, z the
    next-token logits at ``position`` (a batch of inputs is ``{"input_ids", "attention_mask",
    "position"}``, one row per sample; a sequence with several sampled positions is repeated)."""

    def __init__(self, lm: nn.Module, sketch: Tensor):
        super().__init__()
        self.lm = lm
        self.register_buffer("sketch", sketch, persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position: Tensor) -> Tensor:
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = out.logits if hasattr(out, "logits") else out[0]
        z = logits[torch.arange(position.shape[0], device=position.device), position]  # (b, V)
        p = torch.softmax(z.detach().float(), dim=-1).to(z.dtype)  # the GN weights: fixed, no gradient
        centred = p.sqrt() * (z - (p * z).sum(-1, keepdim=True))
        s = self.sketch.to(z.dtype)
        return torch.cat([z @ s.T, centred @ s.T], dim=-1)


class SketchStats:
    """Per-entry diagonals of the sketched NTK (Σ_c ∇y_c²) and Gauss-Newton matrix ((1/m) Σ_c ∇g_c²), and
    their per-row sums per tensor (for the sketch's standard errors)."""

    def __init__(self, params: Mapping[str, Tensor], k: int, samples: int):
        self.shapes = {name: p.shape for name, p in params.items()}
        self.k, self.samples = k, samples
        self.ntk = {n: torch.zeros(p.numel(), dtype=torch.float64) for n, p in params.items()}
        self.gn = {n: torch.zeros(p.numel(), dtype=torch.float64) for n, p in params.items()}
        self.ntk_rows = {n: torch.zeros(k, dtype=torch.float64) for n in params}
        self.gn_rows = {n: torch.zeros(k, dtype=torch.float64) for n in params}

    def add(self, name: str, rows: Tensor) -> None:
        """Rows of one tensor for some samples: ((samples·2k) × numel), ordered (sample, output)."""
        k = self.k
        r = rows.view(-1, 2 * k, rows.shape[-1])
        # the NTK is a sum over the probe positions, G the mean over them
        for half, diag, per_row, scale in (
            (0, self.ntk, self.ntk_rows, 1.0),
            (1, self.gn, self.gn_rows, 1 / self.samples),
        ):
            sq = r[:, half * k : (half + 1) * k].float().square()  # (b, k, numel)
            diag[name] += sq.sum((0, 1)).double().cpu() * scale
            per_row[name] += sq.sum((0, 2)).double().cpu() * scale

    def per_tensor(self, which: str = "ntk") -> dict[str, Tensor]:
        """The per-entry diagonal ``"ntk"`` or ``"gn"`` as one float64 tensor per parameter."""
        src = self.ntk if which == "ntk" else self.gn
        return {n: v.view(self.shapes[n]) for n, v in src.items()}

    def row_estimates(self, which: str, weights: Mapping[str, float] | None = None) -> Tensor:
        """k independent unbiased estimates of Σ_l w_l tr(D_l) (D the ``which`` diagonal; w = 1 by
        default): row c's share times k."""
        src = self.ntk_rows if which == "ntk" else self.gn_rows
        total = torch.zeros(self.k, dtype=torch.float64)
        for n, rows in src.items():
            total += rows * (1.0 if weights is None else float(weights[n]))
        return total * self.k


def mean_and_se(estimates: Tensor, exact: bool) -> tuple[float, float]:
    """The mean of the row estimates and its standard error (0 for the exact quantity)."""
    mean = float(estimates.mean())
    if exact:
        return mean, 0.0
    if estimates.numel() < 2:
        return mean, math.nan  # one row: unbiased, but no standard error
    return mean, float(estimates.std(unbiased=True) / math.sqrt(estimates.numel()))


def sketch_pass(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    sketch: Tensor,
    jacobian_elements: int,
    engine: str = "auto",
) -> tuple[Tensor, SketchStats]:
    """One Jacobian pass of the 2k sketched outputs on the probe ``inputs`` (m samples): the m × m sketched
    NTK Gram (float64, from the first k outputs) and the :class:`SketchStats`."""
    from prunekit.structure.units import trainable_parameters

    params = trainable_parameters(model)
    m, k = int(inputs["position"].shape[0]), int(sketch.shape[0])
    device = next(iter(params.values())).device
    wrapper = SketchedOutputs(model, sketch.to(device))
    stats = SketchStats(params, k, m)
    gram = torch.zeros(m, m, dtype=torch.float64)
    named = {f"lm.{n}": p for n, p in params.items()}  # the wrapper's names for the model's tensors
    rows_out = 2 * k
    with eval_mode(model):
        jac = JacobianRows(wrapper, dict(inputs), engine)
        for names in blocks(dict.fromkeys(named), named, max(1, jacobian_elements // (m * rows_out))):
            block = {n: named[n].detach() for n in names}
            size = sum(v.numel() for v in block.values())
            span = min(m, max(1, jacobian_elements // (rows_out * size)))
            if span < m:
                span = max(1, span // 2)  # two chunks are held at once below
            starts = list(range(0, m, span))
            for i, a in enumerate(starts):
                ra = jac.rows(block, a, min(a + span, m))
                for n, r in ra.items():
                    stats.add(n[3:], r)
                na = _ntk_half(ra, k)
                for b in starts[i:]:
                    nb = na if b == a else _ntk_half(jac.rows(block, b, min(b + span, m)), k)
                    _add_block(gram, na, nb, a, b)
    return gram, stats


def _ntk_half(rows: Mapping[str, Tensor], k: int) -> list[Tensor]:
    """Per tensor, the NTK outputs' rows as (samples, k·numel) float32 (one sample's rows contiguous)."""
    out = []
    for r in rows.values():
        v = r.view(-1, 2 * k, r.shape[-1])[:, :k]
        out.append(v.reshape(v.shape[0], -1).float())
    return out


def _add_block(gram: Tensor, ja: list[Tensor], jb: list[Tensor], a: int, b: int) -> None:
    blk = None
    for ra, rb in zip(ja, jb, strict=True):
        part = ra @ rb.T
        blk = part if blk is None else blk.add_(part)
    if blk is None:
        return
    blk = blk.double().cpu()
    rows, cols = blk.shape
    gram[a : a + rows, b : b + cols] += blk
    if a != b:
        gram[b : b + cols, a : a + rows] += blk.T
