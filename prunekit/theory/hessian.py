"""T_opt: sharpness of the loss from Hessian-vector products (DESIGN.md section 3).

The loss is the mean cross-entropy over *all* samples of ``batches`` (one ``(inputs, labels)`` batch or a
list of them), model in eval mode; every trainable parameter (``requires_grad``) takes part, in
``named_parameters()`` order. A list of batches is a micro-batching of the same loss: batch b enters with
weight n_b / N, so splitting a batch changes nothing but memory (exact because in eval mode no sample's
loss depends on another's: BatchNorm uses its running statistics). ``loss_fn(logits, labels)`` (the mean
loss of one batch) replaces cross-entropy, e.g. for tests with a known quadratic.

- :func:`hvp` — H v by double backward;
- :func:`hessian_trace` — Hutchinson / Hutch++ trace with standard errors; the same probes give the
  diagonal-block traces tr(H_ll) of each parameter tensor, per-group and per-unit traces, and the
  layer-normalised trace T = Σ_l ‖θ_l‖² tr(H_ll) / P, where a "layer" l is one parameter tensor;
- :func:`top_eigenvalue` — of H by power iteration or Lanczos (:mod:`prunekit.theory.eigen`);
- :func:`gauss_newton_top_eigenvalue` — of G = Jᵀ H_out J, positive semi-definite even right after
  pruning, when the weights are off a minimum and H is indefinite.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunekit.batch import Batch, batch_size_of, concat_inputs, logits_of, move_to, slice_inputs
from prunekit.structure.group import Group
from prunekit.structure.units import UnitReducer, normalise_groups
from prunekit.theory.eigen import flat, top_eigenvalue_of, unflat
from prunekit.theory.modes import grad_scope

LossFn = Callable[[Tensor, Tensor], Tensor]
Vectors = list[Tensor]


def _batch_list(batches: Batch | Sequence[Batch]) -> list[Batch]:
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[1], Tensor):
        if isinstance(batches[0], (Tensor, Mapping)):
            return [batches]
    out = list(batches)
    if not out:
        raise ValueError("no batches given: pass one (inputs, labels) batch or a non-empty list of them")
    return out


class _Objective:
    """The weighted mean loss over a fixed list of batches, and products with its Hessian / Gauss-Newton."""

    def __init__(self, model: nn.Module, batches: Batch | Sequence[Batch], loss_fn: LossFn | None):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters (requires_grad); unfreeze some first")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.device = self.params[0].device
        self.batches = [(move_to(x, self.device), y.to(self.device)) for x, y in _batch_list(batches)]
        sizes = [batch_size_of(x) for x, _ in self.batches]
        self.num_samples = sum(sizes)
        self.weights = [s / self.num_samples for s in sizes]
        ends = np.cumsum(sizes).tolist()
        self.spans = list(zip([0, *ends[:-1]], ends, strict=True))  # each batch's rows in the whole
        self.loss_fn = loss_fn or (lambda logits, labels: F.cross_entropy(logits, labels))

    def _grads(self, outputs: Tensor, grad_outputs: Tensor | None = None, create: bool = False) -> Vectors:
        gs = torch.autograd.grad(
            outputs, self.params, grad_outputs, create_graph=create, retain_graph=True, allow_unused=True
        )
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, self.params, strict=True)]

    def hvp(self, vectors: Vectors, rows: Tensor | None = None) -> Vectors:
        """H v; with ``rows`` (indices into the concatenated samples), the Hessian of the mean loss over
        those samples only: a random subset gives an unbiased, cheaper estimate of H v."""
        out = [torch.zeros_like(p) for p in self.params]
        batches = zip(self.batches, self.weights, strict=True) if rows is None else self._subset(rows)
        for (x, y), w in batches:
            loss = self.loss_fn(logits_of(self.model, x), y) * w
            grads = self._grads(loss, create=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vectors, strict=True) if g.requires_grad)
            if not isinstance(dot, Tensor):  # the loss is linear in every parameter: H = 0
                continue
            for acc, h in zip(out, self._grads(dot), strict=True):
                acc.add_(h.detach())
        return out

    def _subset(self, rows: Tensor) -> list[tuple[Batch, float]]:
        """The samples ``rows`` gathered into as few micro-batches as the largest one allows (one forward
        per micro-batch is the cost), each weighted by its share of the subset."""
        xs, ys = [], []
        for (x, y), (lo, hi) in zip(self.batches, self.spans, strict=True):
            sel = (rows[(rows >= lo) & (rows < hi)] - lo).to(y.device)
            if len(sel):
                xs.append(slice_inputs(x, sel))
                ys.append(y[sel])
        x, y = concat_inputs(xs), torch.cat(ys)
        m, step = len(y), max(hi - lo for lo, hi in self.spans)
        return [
            ((slice_inputs(x, slice(i, i + step)), y[i : i + step]), min(step, m - i) / m)
            for i in range(0, m, step)
        ]

    def gnvp(self, vectors: Vectors) -> Vectors:
        """G v = Σ_b w_b J_bᵀ H_out J_b v, with H_out the Hessian of the loss with respect to the logits."""
        out = [torch.zeros_like(p) for p in self.params]
        for (x, y), w in zip(self.batches, self.weights, strict=True):
            logits = logits_of(self.model, x)
            loss = self.loss_fn(logits, y) * w
            dz = torch.autograd.grad(loss, logits, create_graph=True)[0]
            if not dz.requires_grad:  # the loss is linear in the logits: H_out = 0
                continue
            # J v by the double-backward trick: Jᵀu is linear in a dummy u, so d(vᵀJᵀu)/du = J v
            u = torch.zeros_like(logits, requires_grad=True)
            jtu = torch.autograd.grad(logits, self.params, u, create_graph=True, allow_unused=True)
            pairs = [(g, v) for g, v in zip(jtu, vectors, strict=True) if g is not None and g.requires_grad]
            if not pairs:
                continue
            jv = torch.autograd.grad([g for g, _ in pairs], u, [v for _, v in pairs])[0]
            hjv = torch.autograd.grad(dz, logits, jv, retain_graph=True)[0]
            for acc, g in zip(out, self._grads(logits, hjv.detach()), strict=True):
                acc.add_(g.detach())
        return out

    def __enter__(self) -> _Objective:
        # dropout off, BatchNorm on running statistics: a fixed, deterministic loss; every module's own
        # mode comes back on exit; the math attention kernel, which has a double backward
        self._scope = grad_scope(self.model, double_backward=True)
        self._scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._scope.__exit__(*exc)


def _check_vectors(obj: _Objective, vectors: Sequence[Tensor]) -> Vectors:
    if len(vectors) != len(obj.params):
        raise ValueError(
            f"got {len(vectors)} vectors for {len(obj.params)} trainable parameters; pass one per parameter"
        )
    out = []
    for name, p, v in zip(obj.names, obj.params, vectors, strict=True):
        if v.shape != p.shape:
            raise ValueError(f"vector for {name} has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
        out.append(v.to(device=p.device, dtype=p.dtype))
    return out


def hvp(
    model: nn.Module,
    batches: Batch | Sequence[Batch],
    vectors: Sequence[Tensor],
    loss_fn: LossFn | None = None,
) -> Vectors:
    """Hessian of the mean loss times ``vectors`` (one tensor per trainable parameter, in order)."""
    with _Objective(model, batches, loss_fn) as obj:
        return obj.hvp(_check_vectors(obj, vectors))


def _rademacher(params: Vectors, gen: torch.Generator) -> Vectors:
    return [(torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1).to(p.device) for p in params]


class _Reducer:
    """Sums a per-entry tensor list over parameters, groups and units (the same for every probe).

    Groups go through the NTK's :class:`~prunekit.structure.units.UnitReducer`, so both estimators
    count a unit's entries the same way: each entry once per unit, even where one unit slices the same
    tensor along two dims (row j and column j of a layer that feeds itself).
    """

    def __init__(self, obj: _Objective, groups: Sequence[Group] | Mapping[str, Sequence[str]] | None):
        self.names = obj.names
        self.sq_norms = np.array([float(p.detach().double().pow(2).sum()) for p in obj.params])
        self.num_params = sum(p.numel() for p in obj.params)
        index = {n: i for i, n in enumerate(obj.names)}
        # a parameter partition (any subset of tensors, not necessarily covering): group -> tensor indices
        self.tensors: dict[str, list[int]] = {}
        self.reducers: list[tuple[str, UnitReducer]] = []
        if isinstance(groups, Mapping):
            all_names = dict(obj.model.named_parameters()) | dict(obj.model.named_buffers())
            for gname, pnames in groups.items():
                unknown = [p for p in pnames if p not in all_names]
                if unknown:
                    raise ValueError(f"group {gname!r} names unknown parameter {unknown[0]!r}")
                # buffers and frozen parameters carry no Hessian
                self.tensors[gname] = [index[p] for p in pnames if p in index]
            return
        specs, _ = normalise_groups(groups or (), obj.model)
        shapes = {n: p.shape for n, p in zip(obj.names, obj.params, strict=True)}
        self.reducers = [(gname, UnitReducer(units, shapes)) for gname, units in specs]

    def __call__(self, entries: Vectors) -> dict[str, Any]:
        per_tensor = np.array([float(e.sum(dtype=torch.float64)) for e in entries])
        out: dict[str, Any] = {
            "trace": float(per_tensor.sum()),
            "per_tensor": per_tensor,
            "normalized_trace": float((self.sq_norms * per_tensor).sum() / self.num_params),
            "groups": {g: float(per_tensor[idx].sum()) for g, idx in self.tensors.items()},
            "units": {},
        }
        values = dict(zip(self.names, entries, strict=True))
        for gname, reduce in self.reducers:
            units, total = reduce(values)
            out["groups"][gname] = float(total)
            out["units"][gname] = units.cpu().numpy()
        return out


def _probe_masks(obj: _Objective, masks: Sequence[Tensor | None] | None) -> list[Tensor | None] | None:
    if masks is None:
        return None
    if len(masks) != len(obj.params):
        raise ValueError(f"got {len(masks)} probe masks for {len(obj.params)} trainable parameters; one each")
    out: list[Tensor | None] = []
    for name, p, m in zip(obj.names, obj.params, masks, strict=True):
        if m is not None and m.shape != p.shape:
            raise ValueError(f"probe mask for {name} has shape {tuple(m.shape)}, expected {tuple(p.shape)}")
        out.append(None if m is None else m.to(device=p.device, dtype=p.dtype))
    return out


def _mean_se(det: Any, samples: list[Any]) -> tuple[Any, Any]:
    arr = np.asarray(samples, dtype=np.float64)
    se = (
        arr.std(axis=0, ddof=1) / math.sqrt(arr.shape[0])
        if arr.shape[0] > 1
        else np.full(arr.shape[1:], np.nan)
    )
    return np.asarray(det, dtype=np.float64) + arr.mean(axis=0), se


def hessian_trace(
    model: nn.Module,
    batches: Batch | Sequence[Batch],
    num_probes: int = 32,
    method: str = "hutchinson",
    groups: Sequence[Group] | Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    progress: bool | None = None,
    known_diagonal: Sequence[Tensor] | None = None,
    samples_per_probe: int | None = None,
    probe_masks: Sequence[Tensor | None] | None = None,
) -> dict[str, Any]:
    """Stochastic trace of the Hessian and of its diagonal blocks, with standard errors.

    ``method="hutchinson"``: ``num_probes`` Rademacher probes v; every per-entry product v ⊙ Hv has the
    Hessian diagonal as its mean, so summing it over a parameter tensor, a group's slice entries (each entry
    once) or one unit's slices gives unbiased traces of those diagonal blocks from the same probes.
    ``method="hutchpp"`` (Meyer et al. 2021): a third of the budget sketches the dominant subspace Q, a third
    computes HQ, whose part of every block trace, tr(D QQᵀH), is exact; the last third estimates the rest,
    tr(D H(I − QQᵀ)), by Hutchinson. Far lower variance when a few eigenvalues dominate; the standard
    errors cover the stochastic part only. Memory: 2·⌊num_probes/3⌋ copies of the parameters.

    ``known_diagonal``: a per-entry diagonal (one tensor per trainable parameter) known exactly, added to
    every trace; the probes then estimate the rest. With ``loss_fn=jacobian_stats.residual_loss`` and the
    Gauss-Newton diagonal this is the cross-entropy Hessian as exact G plus Hutchinson on the small
    remainder R (see :mod:`prunekit.theory.jacobian_stats`): far lower variance near a minimum.
    ``samples_per_probe``: each Hutchinson probe uses its own random subset of that many samples (without
    replacement): unbiased, cheaper per probe, and the standard error includes the subsampling.
    ``probe_masks`` (one boolean tensor or None per trainable parameter): the probes are zero outside the
    masks, so the traces are those of the Hessian restricted to the masked-in entries (a Level-2 masked
    model's remaining parameters: what the surgically pruned model's Hessian is).

    Returns trace/trace_se, normalized_trace/normalized_trace_se (T = Σ_l ‖θ_l‖² tr(H_ll) / P, l = one
    parameter tensor, P = trainable parameter count), per_tensor/per_tensor_se ({name: value}),
    groups/groups_se ({group: value}) and units/units_se ({group: [per-unit trace]}), plus bookkeeping.
    """
    if method not in ("hutchinson", "hutchpp"):
        raise ValueError(f"unknown trace method {method!r}; choose 'hutchinson' or 'hutchpp'")
    min_probes = 3 if method == "hutchpp" else 1
    if num_probes < min_probes:
        raise ValueError(f"{method} needs num_probes >= {min_probes}, got {num_probes}")
    gen = torch.Generator().manual_seed(seed)
    show = sys.stderr.isatty() if progress is None else progress
    with _Objective(model, batches, loss_fn) as obj:
        reduce = _Reducer(obj, groups)
        known = (
            [torch.zeros_like(p) for p in obj.params]
            if known_diagonal is None
            else _check_vectors(obj, known_diagonal)
        )
        basis: Tensor | None = None
        masks = _probe_masks(obj, probe_masks)

        def probe() -> Vectors:
            v = _rademacher(obj.params, gen)
            return (
                v if masks is None else [vi if m is None else vi * m for vi, m in zip(v, masks, strict=True)]
            )

        det = reduce(known)
        if samples_per_probe is not None and not 1 <= samples_per_probe:
            raise ValueError(
                f"samples_per_probe must be a positive number of samples, got {samples_per_probe}"
            )
        subset = samples_per_probe is not None and samples_per_probe < obj.num_samples
        hutch_probes = num_probes
        bar = tqdm(total=num_probes, desc="Hessian trace", disable=not show, leave=False)
        if method == "hutchpp":
            k = num_probes // 3
            hutch_probes = num_probes - 2 * k
            sketch = []
            for _ in range(k):
                sketch.append(flat(obj.hvp(probe())))
                bar.update()
            basis = torch.linalg.qr(torch.stack(sketch, dim=1)).Q  # (P, k) orthonormal
            det_entries = [torch.zeros_like(p) for p in obj.params]
            for j in range(basis.shape[1]):
                q = unflat(basis[:, j], obj.params)
                for acc, qi, hqi in zip(det_entries, q, obj.hvp(q), strict=True):
                    acc.add_(qi * hqi)  # Σ_j Q_j ⊙ HQ_j: its sum over a block D is tr(D QQᵀH)
                bar.update()
            det = reduce([a + b for a, b in zip(det_entries, known, strict=True)])
        samples = []
        for _ in range(hutch_probes):
            v = probe()
            w = v
            if basis is not None:  # project the probe off the sketched subspace: estimates tr(D H(I − QQᵀ))
                fv = flat(v)
                w = unflat(fv - basis @ (basis.T @ fv), obj.params)
            rows = torch.randperm(obj.num_samples, generator=gen)[:samples_per_probe] if subset else None
            samples.append(reduce([vi * hwi for vi, hwi in zip(v, obj.hvp(w, rows), strict=True)]))
            bar.update()
        bar.close()
    out: dict[str, Any] = {"method": method, "num_probes": num_probes, "seed": seed}
    for key in ("trace", "normalized_trace"):
        mean, se = _mean_se(det[key], [s[key] for s in samples])
        out[key], out[key + "_se"] = float(mean), float(se)
    mean, se = _mean_se(det["per_tensor"], [s["per_tensor"] for s in samples])
    out["per_tensor"] = dict(zip(obj.names, mean.tolist(), strict=True))
    out["per_tensor_se"] = dict(zip(obj.names, se.tolist(), strict=True))
    gnames = list(det["groups"])
    mean, se = _mean_se(
        [det["groups"][g] for g in gnames], [[s["groups"][g] for g in gnames] for s in samples]
    )
    out["groups"] = dict(zip(gnames, np.atleast_1d(mean).tolist(), strict=True))
    out["groups_se"] = dict(zip(gnames, np.atleast_1d(se).tolist(), strict=True))
    out["units"], out["units_se"] = {}, {}
    for g in det["units"]:
        mean, se = _mean_se(det["units"][g], [s["units"][g] for s in samples])
        out["units"][g], out["units_se"][g] = mean.tolist(), se.tolist()
    out["num_params"] = sum(p.numel() for p in obj.params)
    out["num_samples"] = obj.num_samples
    out["samples_per_probe"] = samples_per_probe if subset else obj.num_samples
    return out


def _top(
    matvec: Callable[[Vectors], Vectors],
    obj: _Objective,
    iters: int,
    tol: float,
    seed: int,
    method: str,
) -> dict[str, Any]:
    """The top eigenvalue of ``matvec`` (H or G) over the trainable parameters, as flat vectors."""
    return top_eigenvalue_of(
        lambda x: flat(matvec(unflat(x, obj.params))),
        sum(p.numel() for p in obj.params),
        iters,
        tol,
        seed,
        method,
        device=obj.device,
        dtype=obj.params[0].dtype,
    )


def top_eigenvalue(
    model: nn.Module,
    batches: Batch | Sequence[Batch],
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    method: str = "power",
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """Top eigenvalue of the Hessian: {eigenvalue, iters, converged, method}.

    ``power`` converges to the eigenvalue of largest *magnitude* (negative if H is dominated by negative
    curvature, e.g. right after pruning); ``lanczos`` (full reorthogonalisation, ``iters`` vectors kept)
    returns the largest *algebraic* Ritz value and converges faster. Stops when the relative change is
    below ``tol``.
    """
    with _Objective(model, batches, loss_fn) as obj:
        return _top(obj.hvp, obj, iters, tol, seed, method)


def gauss_newton_top_eigenvalue(
    model: nn.Module,
    batches: Batch | Sequence[Batch],
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    method: str = "power",
    loss_fn: LossFn | None = None,
) -> dict[str, Any]:
    """Top eigenvalue of the Gauss-Newton matrix G = (1/N) Σ_i J_iᵀ H_i J_i.

    J_i is the Jacobian of sample i's logits, H_i the Hessian of its loss with respect to the logits —
    for cross-entropy diag(p_i) − p_i p_iᵀ — taken by autograd, so G v costs one forward and three
    backward passes (J v via the double-backward trick, then Jᵀ(H_out J v)). G is positive semi-definite
    for any convex loss, so it is a valid sharpness even where H is indefinite.
    """
    with _Objective(model, batches, loss_fn) as obj:
        return _top(obj.gnvp, obj, iters, tol, seed, method)
