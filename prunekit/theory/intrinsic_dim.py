"""d_eff: the intrinsic dimension of the data (DESIGN.md section 3).

Estimators work on a point cloud ``X`` of shape (N, D) (numpy array or tensor):

- :func:`twonn` — TwoNN (Facco et al. 2017) from the ratio of the distances to the 1st and 2nd
  nearest neighbours, with its maximum-likelihood variant;
- :func:`levina_bickel` — the Levina–Bickel k-NN maximum-likelihood estimator averaged over k;
- :func:`subsample_curve` — either estimator on disjoint subsamples of N, N/2, N/4 … points, with
  standard errors (a flat curve means the estimate has converged in N);
- :func:`representation` — the point cloud itself: raw inputs or a named module's activations.

Exact duplicates are removed first: a zero nearest-neighbour distance makes ``log(r2/r1)`` infinite and
the estimate NaN (duplicates are common in real data, e.g. blank images or repeated sentences).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.batch import Batch, batch_size_of, logits_of, move_to
from prunekit.theory.modes import eval_mode

# distances are computed in blocks of query rows holding at most this many float64 entries (128 MiB)
_BLOCK_ENTRIES = 1 << 24


def _as_points(X: Any) -> np.ndarray:
    arr = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(
            f"points must be a 2-D array (N, D), got shape {arr.shape}; flatten each point first"
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("points contain NaN or inf; clean the features before estimating the dimension")
    return arr


def _deduplicate(arr: np.ndarray) -> tuple[np.ndarray, int]:
    unique = np.unique(arr, axis=0)
    return unique, arr.shape[0] - unique.shape[0]


def _knn_distances(arr: np.ndarray, k: int) -> np.ndarray:
    """Euclidean distances from every point to its ``k`` nearest other points, sorted ascending (N, k).

    Neighbours are found with ``torch.cdist`` in blocks; it expands ‖x − y‖² = ‖x‖² + ‖y‖² − 2x·y, which
    cancels catastrophically for close points far from the origin (a cloud offset by 1e6 gave garbage
    ratios r2/r1). So the points are centred first, and the ``k`` distances kept are recomputed directly
    as ‖x − y‖ of the chosen neighbours.
    """
    n = arr.shape[0]
    if n <= k:
        raise ValueError(f"need more than {k} distinct points for {k} nearest neighbours, got {n}")
    pts = torch.from_numpy(np.ascontiguousarray(arr - arr.mean(axis=0)))
    out = np.empty((n, k), dtype=np.float64)
    chunk = max(16, _BLOCK_ENTRIES // n)
    sub = max(1, _BLOCK_ENTRIES // (k * pts.shape[1]))  # rows whose k difference vectors fit the budget
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d = torch.cdist(pts[start:stop], pts)
        # exclude each point itself by index: the matrix-product distance of a point to itself may be a
        # tiny positive number rather than exactly 0
        rows = torch.arange(stop - start)
        d[rows, rows + start] = math.inf
        idx = torch.topk(d, k, dim=1, largest=False).indices
        for a in range(start, stop, sub):
            b = min(a + sub, stop)
            exact = (pts[a:b, None, :] - pts[idx[a - start : b - start]]).norm(dim=-1)
            out[a:b] = exact.sort(dim=1).values.numpy()
    return out


def _subsample(arr: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    if max_samples is None or arr.shape[0] <= max_samples:
        return arr
    rng = np.random.default_rng(seed)
    return arr[np.sort(rng.choice(arr.shape[0], size=max_samples, replace=False))]


def twonn(X: Any, discard: float = 0.1, seed: int = 0, max_samples: int | None = None) -> dict[str, Any]:
    """TwoNN intrinsic dimension of the points ``X`` (N, D).

    For each distinct point μ = r2/r1; with μ sorted and F_i = i/N, the largest ``discard`` fraction of μ is
    dropped (the tail is dominated by noise and density changes), and ``d`` is the least-squares slope
    through the origin of −log(1 − F) against log μ. ``d_mle`` = (N − 1) / Σ log μ over all points is the
    maximum-likelihood version under the same Pareto model. ``seed`` only picks the random subsample when
    ``max_samples`` is smaller than the number of points.
    """
    if not 0.0 <= discard < 1.0:
        raise ValueError(
            f"discard must be in [0, 1), got {discard}; it is the fraction of largest ratios dropped"
        )
    arr, n_dup = _deduplicate(_subsample(_as_points(X), max_samples, seed))
    if arr.shape[0] < 3:
        raise ValueError(f"TwoNN needs at least 3 distinct points, got {arr.shape[0]}")
    r = _knn_distances(arr, 2)
    ok = r[:, 0] > 0  # a zero r1 after deduplication can only come from round-off; drop it, never NaN
    mu = np.sort(r[ok, 1] / r[ok, 0])
    n = mu.shape[0]
    log_mu = np.log(mu)
    f = np.arange(1, n + 1) / n
    keep = max(int(math.floor(n * (1.0 - discard))), 1)
    keep = min(keep, n - 1)  # F_N = 1 would give -log(0)
    x, y = log_mu[:keep], -np.log1p(-f[:keep])
    sxx = float(np.dot(x, x))
    d = float(np.dot(x, y) / sxx) if sxx > 0 else math.inf
    total = float(log_mu.sum())
    d_mle = (n - 1) / total if total > 0 else math.inf
    return {"d": d, "d_mle": float(d_mle), "n_used": int(n), "n_duplicates": int(n_dup + (~ok).sum())}


def levina_bickel(X: Any, k1: int = 5, k2: int = 20, max_samples: int | None = None, seed: int = 0) -> dict:
    """Levina–Bickel (2004) k-NN maximum-likelihood intrinsic dimension, averaged over k = k1..k2.

    For each point and k, m_k(x)⁻¹ = (1/(k−1)) Σ_{j<k} log(T_k(x)/T_j(x)) with T_j the distance to the j-th
    neighbour. Points are combined with the MacKay–Ghahramani correction: the *inverse* estimates are
    averaged, m_k = [mean_x m_k(x)⁻¹]⁻¹ — this is the MLE of the pooled likelihood, whereas averaging m_k(x)
    itself (the original paper) is biased upwards by Jensen's inequality. ``d`` is the mean of m_k over k.
    """
    if not 2 <= k1 <= k2:
        raise ValueError(f"need 2 <= k1 <= k2, got k1={k1}, k2={k2}")
    arr, n_dup = _deduplicate(_subsample(_as_points(X), max_samples, seed))
    t = _knn_distances(arr, k2)
    t = t[t[:, 0] > 0]
    log_t = np.log(t)
    per_k: dict[int, float] = {}
    for k in range(k1, k2 + 1):
        inv = (log_t[:, k - 1 : k] - log_t[:, : k - 1]).sum(axis=1) / (k - 1)
        mean_inv = float(inv.mean())
        per_k[k] = 1.0 / mean_inv if mean_inv > 0 else math.inf
    d = float(np.mean(list(per_k.values())))
    return {"d": d, "per_k": per_k, "n_used": int(t.shape[0]), "n_duplicates": int(n_dup)}


_ESTIMATORS = {"twonn": twonn, "levina_bickel": levina_bickel}


def subsample_curve(
    X: Any,
    estimator: str = "twonn",
    fractions: Sequence[float] = (1.0, 1 / 2, 1 / 4, 1 / 8),
    repeats: int | None = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The estimate on disjoint random subsamples of ``fraction * N`` points, for each fraction.

    At fraction f the shuffled points are cut into ⌊1/f⌋ disjoint parts (at most ``repeats`` of them are
    used); ``mean`` is the average estimate over parts and ``se`` its standard error (``None`` with a single
    part, e.g. at f = 1). Disjoint parts make the estimates independent, so the standard error is honest.
    """
    fn = _ESTIMATORS.get(estimator)
    if fn is None:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {sorted(_ESTIMATORS)}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1 or None, got {repeats}")
    arr = _as_points(X)
    rng = np.random.default_rng(seed)
    out = []
    for frac in fractions:
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"fractions must be in (0, 1], got {frac}")
        n = int(round(arr.shape[0] * frac))
        parts = max(int(math.floor(1.0 / frac + 1e-9)), 1)
        if repeats is not None:
            parts = min(parts, repeats)
        perm = rng.permutation(arr.shape[0])
        values = [fn(arr[perm[i * n : (i + 1) * n]])["d"] for i in range(parts)]
        mean = float(np.mean(values))
        se = float(np.std(values, ddof=1) / math.sqrt(parts)) if parts > 1 else None
        out.append(
            {"fraction": float(frac), "n": n, "parts": parts, "mean": mean, "se": se, "values": values}
        )
    return out


def _pool(out: Any, inputs: Any, pool: str) -> torch.Tensor:
    """Turn a module output into one vector per example."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif not isinstance(out, torch.Tensor):
        # HF ModelOutput: prefer the pooled embedding when the module has one
        pooled = getattr(out, "pooler_output", None)
        out = pooled if pooled is not None and pool in ("auto", "cls") else out.last_hidden_state
    if pool == "cls" and out.dim() == 3:
        return out[:, 0]
    if pool in ("auto", "mean") and out.dim() == 3 and isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        if mask is None:
            return out.mean(dim=1)
        m = mask.to(out.dtype).unsqueeze(-1)
        return (out * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    if pool == "mean" and out.dim() > 2:
        return out.flatten(2).mean(dim=2)  # channels-first tensors: average over positions
    return out.flatten(1)


def representation(
    model: nn.Module | None,
    batches: Iterable[Batch],
    layer: str = "inputs",
    max_samples: int | None = 2000,
    pool: str = "auto",
) -> np.ndarray:
    """The points whose intrinsic dimension is d_eff: an (N, D) float32 array, N ≤ ``max_samples``.

    ``layer="inputs"``: the raw inputs, each flattened (tensor inputs only; token ids of text have no useful
    geometry — pick a module instead). Otherwise ``layer`` names a module of ``model`` (as in
    ``named_modules()``) and its output activations are recorded by a forward hook, model in eval mode:
    a tuple output gives its first element; an HF ModelOutput gives ``pooler_output`` when present
    (e.g. ``"bert"``), else ``last_hidden_state``. ``pool`` turns (B, T, H) token states into one vector:
    ``"auto"``/``"mean"`` = attention-mask-weighted mean over tokens for text (a frozen encoder's sentence
    embedding, e.g. layer ``"bert.encoder"``), ``"cls"`` = first token (e.g. ``"bert.pooler"`` is already
    pooled); for tensor inputs ``"auto"`` flattens and ``"mean"`` averages over spatial positions.
    """
    if pool not in ("auto", "mean", "cls", "flatten"):
        raise ValueError(f"unknown pool {pool!r}; choose auto, mean, cls or flatten")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    feats: list[torch.Tensor] = []
    count = 0
    if layer == "inputs":
        for inputs, _ in batches:
            if isinstance(inputs, Mapping):
                raise ValueError(
                    "layer='inputs' needs tensor inputs; for text pass a module name, e.g. 'bert.pooler'"
                )
            feats.append(inputs.detach().flatten(1).float().cpu())
            count += batch_size_of(inputs)
            if max_samples is not None and count >= max_samples:
                break
    else:
        if model is None:
            raise ValueError(f"layer={layer!r} needs a model; pass the model or use layer='inputs'")
        modules = dict(model.named_modules())
        if layer not in modules:
            near = [n for n in modules if layer.split(".")[-1] in n][:5]
            raise ValueError(f"model has no module named {layer!r}; similar names: {near}")
        captured: list[Any] = []
        handle = modules[layer].register_forward_hook(lambda _m, _i, o: captured.append(o))
        device = next(model.parameters()).device
        try:
            with torch.no_grad(), eval_mode(model, eager_attention=False):
                for inputs, _ in batches:
                    inputs = move_to(inputs, device)
                    captured.clear()
                    logits_of(model, inputs)
                    if not captured:
                        raise ValueError(f"module {layer!r} did not run in the forward pass; pick another")
                    feats.append(_pool(captured[-1], inputs, pool).float().cpu())
                    count += batch_size_of(inputs)
                    if max_samples is not None and count >= max_samples:
                        break
        finally:
            handle.remove()
    if not feats:
        raise ValueError("no batches to take a representation from: the data split is empty")
    out = torch.cat(feats)
    if max_samples is not None:
        out = out[:max_samples]
    return out.numpy()
