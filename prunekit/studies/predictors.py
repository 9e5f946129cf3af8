"""Every predictor of one candidate, computed on the pruned model *before* any fine-tuning.

All of them read the training (or validation) split only, never the test split. The estimator settings
come from the config's ``estimate`` section and are fixed before any candidate is measured.

Each predictor has a direction fixed here, a priori (:data:`DIRECTIONS`): +1 when a larger value is
claimed to mean a better fine-tuned model, −1 when smaller is claimed better. The study reports τ as
measured and ``aligned τ`` = direction · τ (positive: the predictor ranks the way it claims to).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from prunekit.theory.proxies import all_proxies

# direction of each predictor against the measured test accuracy (the gap is the other way round)
DIRECTIONS: dict[str, int] = {
    "bound": -1,  # stated bound sqrt(C·T/(n·d_eff)), Level 2 (recomputed on the pruned model)
    "bound_without_d_eff": -1,  # sqrt(C·T/n)
    "C_arch": -1,
    "T_opt": -1,
    "C_times_T": -1,
    "level1_ntk_trace": 1,  # trace(Θ) − Σ removed units' NTK traces (dense Jacobian; screening)
    "level2_ntk_trace": 1,  # trace of the pruned model's NTK, recomputed
    # the theory planner's "risk": fit and generalization in one number (probe loss + stated bound)
    "risk": -1,
    "params": 1,
    "macs": 1,
    "probe_loss": -1,  # pre-fine-tune cross-entropy on the estimator's training probe set
    "val_loss": -1,  # pre-fine-tune cross-entropy on the validation split
    "val_accuracy": 1,
    "removed_weight_mass": -1,  # ‖θ_dense‖² − ‖θ_pruned‖²
    "snip": 1,
    "grasp": 1,
    "synflow": 1,
    "jacob_cov": 1,
    "random": 1,
}
THEORY = (
    "bound",
    "bound_without_d_eff",
    "C_arch",
    "T_opt",
    "C_times_T",
    "level1_ntk_trace",
    "level2_ntk_trace",
    "risk",
)


def with_derived(pred: dict[str, Any] | None) -> dict[str, Any] | None:
    """Predictors computed from stored ones (so adding one needs no re-measurement)."""
    if pred is None:
        return None
    out = dict(pred)
    if out.get("bound") is not None and out.get("probe_loss") is not None:
        out["risk"] = out["probe_loss"] + out["bound"]
    return out


def sq_norm(model: nn.Module) -> float:
    return float(sum(p.detach().double().pow(2).sum() for p in model.parameters()))


def level1_remaining_trace(dense_groups: Mapping[str, Mapping[str, Any]], total_trace: float, plan) -> float:
    """trace(Θ) minus the per-unit NTK traces of the removed units (Estimates.groups of the dense model).

    A screening heuristic: it ignores the removed units' downstream paths.
    """
    removed = 0.0
    for g, info in dense_groups.items():
        units = info.get("ntk_unit_traces")
        if units is None or g not in plan.keep:
            continue
        kept = set(plan.keep[g])
        removed += sum(float(t) for i, t in enumerate(units) if i not in kept)
    return total_trace - removed


def _random_value(name: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


def level2(pruned: nn.Module, splits, est_cfg, seed: int) -> dict[str, Any]:
    """C_arch, T_opt, d_eff, the bound and the NTK trace of the pruned model (its Θ recomputed)."""
    from prunekit.theory import estimate

    est = estimate(pruned, splits, est_cfg, seed=seed)
    C, T, n, d = est.C_arch, est.T_opt, est.n, est.d_eff
    ct = C * T
    return {
        "C_arch": C,
        "T_opt": T,
        "n": n,
        "d_eff": d,
        "bound": est.bound,
        "bound_without_d_eff": math.sqrt(ct / n) if ct > 0 else None,
        "C_times_T": ct,
        "level2_ntk_trace": float(est.ntk["trace"]),
        "hessian_top_eigenvalue": est.hessian_top_eigenvalue,
        "estimate_seconds": float(est.seconds.get("total", 0.0)),
    }


def compute_predictors(
    name: str,
    pruned: nn.Module,
    plan,
    ctx: Mapping[str, Any],
) -> dict[str, Any]:
    """All predictors of one pruned candidate. ``ctx``: splits, est_cfg, seed, dense_sq_norm,
    dense_groups, dense_trace, proxy_batch (inputs, labels), example, val_loader, accelerator."""
    from prunekit.metrics import count_macs, count_params
    from prunekit.train import evaluate

    t0 = time.perf_counter()
    out: dict[str, Any] = level2(pruned, ctx["splits"], ctx["est_cfg"], ctx["seed"])
    out["level1_ntk_trace"] = level1_remaining_trace(ctx["dense_groups"], ctx["dense_trace"], plan)
    out["params"] = count_params(pruned)
    out["macs"] = count_macs(pruned, ctx["example"])
    out["removed_weight_mass"] = ctx["dense_sq_norm"] - sq_norm(pruned)
    probe_x, probe_y = ctx["proxy_batch"]
    with torch.no_grad():
        was = pruned.training
        pruned.eval()
        from prunekit.batch import logits_of

        out["probe_loss"] = float(torch.nn.functional.cross_entropy(logits_of(pruned, probe_x), probe_y))
        pruned.train(was)
    if ctx.get("val_loader") is not None:
        ev = evaluate(pruned, ctx["val_loader"], ctx["accelerator"])
        out["val_loss"], out["val_accuracy"] = ev["loss"], ev["accuracy"]
    out |= all_proxies(pruned, probe_x, probe_y)
    out["random"] = _random_value(name, ctx["seed"])
    out["seconds"] = time.perf_counter() - t0
    return out
