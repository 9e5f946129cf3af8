"""The steps of the estimates, shared by ``Estimator.estimates()`` and ``Estimator.predict()``.

Each step takes the :class:`Run` (model, groups, settings, seed, accelerator) and what the Jacobian pass
gave (:class:`prunekit.theory.jacobian_stats.JacobianStats`), and merges its Monte-Carlo parts over ranks
(:mod:`prunekit.theory.distributed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.batch import Batch
from prunekit.config import EstimateConfig
from prunekit.theory.distributed import rank_and_world, rank_seed, reduce_mean_se, shard_size
from prunekit.theory.jacobian_stats import JacobianStats, residual_loss

log = logging.getLogger("prunekit.theory")

TOP_K = 10
HESSIAN_BATCH = 128  # micro-batch of the Hessian loss: memory only, the loss is the same (eval mode)


class Timer:
    def __init__(self, seconds: dict[str, float], name: str, show: bool):
        self.seconds, self.name, self.show = seconds, name, show

    def __enter__(self) -> None:
        if self.show:
            log.info("estimating %s ...", self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.seconds[self.name] = time.perf_counter() - self.t0
        if self.show and exc[0] is None:
            log.info("estimated %s in %.1f s", self.name, self.seconds[self.name])


def top_groups(groups: dict[str, dict[str, Any]], key: str, k: int = TOP_K) -> list[dict[str, Any]]:
    rows = [(g, v) for g, v in groups.items() if v.get(key) is not None]
    rows.sort(key=lambda gv: -gv[1][key])
    return [{"name": g, "trace": v[key], "se": v.get(key + "_se")} for g, v in rows[:k]]


@dataclass
class Run:
    """What the estimators share: the model and groups, the settings, and the probe split."""

    model: nn.Module
    groups: Any
    cfg: EstimateConfig
    seed: int
    accelerator: Any | None
    per_group: dict[str, dict[str, Any]]  # filled in: group name -> its NTK and Hessian traces

    def share(self, probes: int, minimum: int) -> tuple[int, int]:
        """This rank's number of probes (at least ``minimum``) and its probe seed."""
        rank, world = rank_and_world(self.accelerator)
        return max(minimum, shard_size(probes, rank, world)), rank_seed(self.seed, rank)


def exact_ntk_traces(run: Run, stats: JacobianStats) -> dict[str, Any]:
    """Per-group and per-unit NTK traces summed from the exact per-entry diagonal (standard error 0)."""
    from prunekit.structure.units import UnitReducer, normalise_groups

    diag = stats.per_tensor("ntk")
    specs, _ = normalise_groups(run.groups, run.model)
    shapes = {k: v.shape for k, v in diag.items()}
    for g, units in specs:
        per_unit, total = UnitReducer(units, shapes)(diag)
        run.per_group[g] = {
            "ntk_trace": float(total),
            "ntk_trace_se": 0.0,
            "ntk_unit_traces": per_unit.cpu().numpy(),
            "ntk_unit_traces_se": np.zeros(len(per_unit)),
        }
    return {"group_traces": "exact"}


def hutchinson_ntk_traces(run: Run, probe: Batch) -> dict[str, Any]:
    """Per-group and per-unit NTK traces, this rank's share of the probes, merged over ranks."""
    from prunekit.theory.ntk import group_ntk_traces

    k, seed = run.share(run.cfg.trace_probes, 2)  # the estimator needs >= 2 probes per rank
    tr = group_ntk_traces(run.model, probe, run.groups, num_probes=k, seed=seed)
    stats = {f"g:{g}": (tr.group[g], tr.group_se[g], k) for g in tr.group}
    stats |= {f"u:{g}": (tr.unit[g].numpy(), tr.unit_se[g].numpy(), k) for g in tr.unit}
    stats["total"] = (tr.total, tr.total_se, k)
    merged = reduce_mean_se(stats, run.accelerator)
    for g in tr.group:
        (m, s, _), (um, us, _) = merged[f"g:{g}"], merged[f"u:{g}"]
        run.per_group[g] = {
            "ntk_trace": m,
            "ntk_trace_se": s,
            "ntk_unit_traces": um,
            "ntk_unit_traces_se": us,
        }
    total, se, probes = merged["total"]
    return {
        "group_traces": "hutchinson",
        "hutchinson_trace": total,
        "hutchinson_trace_se": se,
        "hutchinson_probes": probes,
    }


def layer_normalised_trace(
    params: Mapping[str, Tensor], diagonal: Mapping[str, Tensor], num_params: int
) -> float:
    """T = Σ_l ‖θ_l‖² tr(D_ll) / P over parameter tensors l, from a per-entry diagonal D (e.g. Gauss-Newton),
    with P = ``num_params`` (the remaining parameters of a masked model)."""
    total = 0.0
    for name, p in params.items():
        total += float(p.detach().double().pow(2).sum()) * float(diagonal[name].sum(dtype=torch.float64))
    return total / num_params


def hessian_step(
    run: Run,
    batches: list[Batch],
    stats: JacobianStats,
    probe_masks: Sequence[Tensor | None] | None = None,
) -> dict[str, Any]:
    """Hessian trace, T_opt and per-group traces from this rank's probes, merged over ranks.

    ``probe_masks``: per trainable parameter, the entries the probes may touch (None: all); a masked
    model's removed entries are left out, so that the probes see the pruned model's Hessian."""
    from prunekit.structure.units import trainable_parameters
    from prunekit.theory.hessian import hessian_trace

    cfg = run.cfg
    split = cfg.hessian_method == "gauss_newton"
    gn = stats.per_tensor("gn")
    k, seed = run.share(cfg.hessian_probes, 3 if cfg.hessian_method == "hutchpp" else 1)
    h = hessian_trace(
        run.model,
        batches,
        num_probes=k,
        method="hutchpp" if cfg.hessian_method == "hutchpp" else "hutchinson",
        groups=run.groups or None,
        seed=seed,
        loss_fn=residual_loss if split else None,
        known_diagonal=list(gn.values()) if split else None,
        samples_per_probe=cfg.hessian_samples_per_probe,
        probe_masks=probe_masks,
    )
    names = list(h["per_tensor"])
    tensors = (
        np.array([h["per_tensor"][p] for p in names]),
        np.array([h["per_tensor_se"][p] for p in names]),
    )
    merged: dict[str, Any] = {
        "trace": (h["trace"], h["trace_se"], k),
        "T": (h["normalized_trace"], h["normalized_trace_se"], k),
        "tensors": (*tensors, k),
    }
    merged |= {f"g:{g}": (h["groups"][g], h["groups_se"][g], k) for g in h["groups"]}
    merged |= {f"u:{g}": (np.asarray(h["units"][g]), np.asarray(h["units_se"][g]), k) for g in h["units"]}
    m = reduce_mean_se(merged, run.accelerator)
    for g in h["groups"]:
        row = run.per_group.setdefault(g, {})
        row["hessian_trace"], row["hessian_trace_se"] = m[f"g:{g}"][0], m[f"g:{g}"][1]
        if f"u:{g}" in m:
            row["hessian_unit_traces"], row["hessian_unit_traces_se"] = m[f"u:{g}"][0], m[f"u:{g}"][1]
    return {
        "method": cfg.hessian_method,
        "trace": m["trace"][0],
        "trace_se": m["trace"][1],
        "normalized_trace": m["T"][0],
        "normalized_trace_se": m["T"][1],
        "num_probes": m["T"][2],
        "samples_per_probe": h["samples_per_probe"],
        "num_params": h["num_params"],
        "per_tensor": dict(zip(names, np.atleast_1d(m["tensors"][0]).tolist(), strict=True)),
        "gauss_newton_trace": float(sum(float(v.sum()) for v in gn.values())),
        # the exact Gauss-Newton part of normalized_trace (what Estimator.predict gives by default)
        "gauss_newton_normalized_trace": layer_normalised_trace(
            trainable_parameters(run.model), gn, h["num_params"]
        ),
    }


def intrinsic_step(
    model: nn.Module, batches: Iterable[Batch], layer: str, cfg: EstimateConfig, seed: int, notes: list[str]
) -> dict[str, Any]:
    from prunekit.theory.intrinsic_dim import levina_bickel, representation, subsample_curve, twonn

    X = representation(model if layer != "inputs" else None, batches, layer, max_samples=cfg.id_samples)

    def optional(what: str, fn: Callable[[], Any]) -> Any:
        # the companions of d_eff need more distinct points than TwoNN; duplicates (repeated sentences,
        # blank images) are removed first, so a point count alone cannot tell whether there are enough
        try:
            return fn()
        except ValueError as err:
            notes.append(f"no {what}: {err}")
            return None

    return {
        "representation": layer,
        "num_points": int(X.shape[0]),
        "twonn": twonn(X),
        "levina_bickel": optional("Levina-Bickel estimate", lambda: levina_bickel(X)),
        "curve": optional(
            "subsample curve",
            lambda: subsample_curve(X, fractions=(1.0, 0.5, 0.25), repeats=4, seed=seed),
        ),
    }
