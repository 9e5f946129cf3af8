"""``estimate(model, data, cfg)``: every quantity of the stated bound, measured on the training split.

One pass over the Jacobian J of the logits on a class-balanced probe set of ``cfg.probe_samples``
training inputs gives most of it (:mod:`prunekit.theory.jacobian_stats`):

- C_arch: d_λ of the empirical NTK Gram J Jᵀ (:func:`prunekit.theory.ntk.ntk_gram`,
  :func:`prunekit.theory.spectrum.ntk_spectrum`);
- per-group and per-unit NTK traces, exactly, from the same J (``ntk_traces="exact"``; or Hutchinson
  with ``cfg.trace_probes`` probes);
- T_opt: the layer-normalised Hessian trace of the mean training loss on the probe set. With
  ``hessian_method="gauss_newton"`` the Gauss-Newton part of every diagonal block comes exactly from J
  and ``cfg.hessian_probes`` Hutchinson probes estimate only the remainder, which is small near a
  minimum; per-group Hessian traces come from the same probes;
- the top eigenvalue of the Gauss-Newton matrix (Lanczos on the kept J) and of the Hessian (Lanczos from
  the Gauss-Newton eigenvector, at most ``cfg.power_iters`` Hessian-vector products);
- n: the number of training samples; d_eff: TwoNN on ``cfg.id_samples`` points of ``cfg.id_representation``.

Only the train split is read: the test split is for the final evaluation alone. Under data parallelism
the Hutchinson probes are shared out across ranks and merged (:mod:`prunekit.theory.distributed`), and
the probe samples of the Jacobian pass and of the top eigenvalues are shared out and their sums
all-reduced (:mod:`prunekit.theory.jacobian_pass`); TwoNN is computed identically on every rank.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.batch import Batch, batch_size_of
from prunekit.config import EstimateConfig
from prunekit.theory.bound import readable_version, stated_bound
from prunekit.theory.distributed import rank_and_world, rank_seed, reduce_mean_se, shard_size
from prunekit.theory.jacobian_pass import GRAM_PSD_RTOL, jacobian_pass, top_eigenvalues
from prunekit.theory.jacobian_stats import JacobianStats, residual_loss
from prunekit.theory.probe_data import balanced_order as balanced_order
from prunekit.theory.probe_data import chunks, id_batches, id_layer, is_splits, probe_from_batches, train_rows

log = logging.getLogger("prunekit.theory")

ESTIMATES_FORMAT_VERSION = 1
TOP_K = 10
_HESSIAN_BATCH = 128  # micro-batch of the Hessian loss: memory only, the loss is the same (eval mode)


@dataclass
class Estimates:
    """The estimators' results; ``to_dict()`` is JSON-ready (estimate.json)."""

    C_arch: float
    T_opt: float
    n: int
    d_eff: float
    bound: float | None  # None when T_opt <= 0 (indefinite Hessian off a minimum): see notes
    hessian_top_eigenvalue: float
    ntk: dict[str, Any]  # spectrum summary of the Gram (d_lambda, trace, lambda_max, effective ranks, decay)
    hessian: dict[str, Any]  # trace, trace_se, normalized_trace(_se), per_tensor, top eigenvalue details
    intrinsic_dim: dict[str, Any]  # twonn, levina_bickel, subsample curve
    groups: dict[str, dict[str, Any]]  # name -> ntk_trace(_se), hessian_trace(_se), per-unit lists
    top_groups_ntk: list[dict[str, Any]]
    top_groups_hessian: list[dict[str, Any]]
    # ntk_gram: the whole Jacobian pass (Gram, per-entry NTK and Gauss-Newton diagonals); ntk_group_traces:
    # their reduction to groups and units (or the Hutchinson probes), and so on per estimator, plus total
    seconds: dict[str, float]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    format_version: int = ESTIMATES_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimates:
        """Read back ``to_dict()`` output (e.g. estimate.json); extra keys such as ``model_source`` are ignored."""
        readable_version(d, ESTIMATES_FORMAT_VERSION, "estimates")
        optional = {"notes", "format_version"}
        missing = [k for k in cls.__dataclass_fields__ if k not in d and k not in optional]
        if missing:
            raise ValueError(
                f"estimates lack {', '.join(missing)}: not an estimate.json; rerun `prunekit estimate`"
            )
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _jsonable(x: Any) -> Any:
    """Floats, lists and dicts only: numpy/torch scalars and arrays become Python numbers; NaN/inf → None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ------------------------------------------------------------------------------------- estimators
class _Timer:
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


def _top(groups: dict[str, dict[str, Any]], key: str, k: int = TOP_K) -> list[dict[str, Any]]:
    rows = [(g, v) for g, v in groups.items() if v.get(key) is not None]
    rows.sort(key=lambda gv: -gv[1][key])
    return [{"name": g, "trace": v[key], "se": v.get(key + "_se")} for g, v in rows[:k]]


@dataclass
class _Run:
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


def _exact_ntk_traces(run: _Run, stats: JacobianStats) -> dict[str, Any]:
    """Per-group and per-unit NTK traces summed from the exact per-entry diagonal (standard error 0)."""
    from prunekit.theory.ntk_units import UnitReducer, normalise_groups

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


def _hutchinson_ntk_traces(run: _Run, probe: Batch) -> dict[str, Any]:
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


def _hessian(run: _Run, batches: list[Batch], stats: JacobianStats) -> dict[str, Any]:
    """Hessian trace, T_opt and per-group traces from this rank's probes, merged over ranks."""
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
    }


def _intrinsic(
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


def estimate(
    model: nn.Module,
    data: Any,
    cfg: EstimateConfig | None = None,
    groups: Sequence[Any] | None = None,
    accelerator: Any | None = None,
    n: int | None = None,
    seed: int = 0,
) -> Estimates:
    """Estimate C_arch, T_opt, n, d_eff, the stated bound and per-group NTK / Hessian traces.

    ``data``: a :class:`prunekit.data.DataSplits` (its train split is used; ``n`` = ``n_train``) or a
    re-iterable of ``(inputs, labels)`` training batches together with ``n``, the training-set size.
    ``groups``: prunable groups (``prunekit.structure.find_groups``) or ``{name: [param names]}``; without them
    per-group traces are skipped. ``accelerator``: shares the Hutchinson probes across processes.
    The model must give class logits (the Hessian is that of the mean cross-entropy).
    """
    from prunekit.theory.spectrum import ntk_spectrum

    cfg = cfg or EstimateConfig()
    rank, world = rank_and_world(accelerator)
    show = rank == 0
    if accelerator is not None:
        model.to(accelerator.device)
    if is_splits(data):
        n_train = int(data.n_train) if n is None else int(n)
        probe = train_rows(data, balanced_order(data.labels("train"), seed)[: cfg.probe_samples])
        id_data: Iterable[Batch] = list(id_batches(data, cfg.id_samples, seed))
    else:
        if n is None:
            raise ValueError("pass n (the number of training samples) when data is an iterable of batches")
        if iter(data) is data:  # a one-shot iterator: keep its batches, they are read twice
            data = list(data)
        n_train = int(n)
        probe = probe_from_batches(data, cfg.probe_samples, seed)
        id_data = data
    if n_train < 1:
        raise ValueError(f"n must be a positive number of training samples, got {n_train}")
    notes: list[str] = []
    layer = id_layer(model, cfg.id_representation, probe[0], notes)  # fail fast, before the costly parts
    hess_batches = chunks(probe, _HESSIAN_BATCH)
    # ntk_gram: the whole Jacobian pass (Gram, per-entry NTK and Gauss-Newton diagonals); ntk_group_traces:
    # their reduction to groups and units (or the Hutchinson probes), and so on per estimator, plus total
    seconds: dict[str, float] = {}
    per_group: dict[str, dict[str, Any]] = {}
    run = _Run(model, groups, cfg, seed, accelerator, per_group)
    with_groups = groups is not None and len(groups) > 0

    with _Timer(seconds, "ntk_gram", show):  # the Jacobian pass: Gram, NTK and Gauss-Newton diagonals
        gram, stats, shared = jacobian_pass(model, probe, cfg.jacobian_elements, accelerator)
        spectrum = ntk_spectrum(gram, ridge=cfg.ridge, psd_rtol=GRAM_PSD_RTOL)
        del gram
    if with_groups:
        with _Timer(seconds, "ntk_group_traces", show):
            exact = cfg.ntk_traces == "exact"
            spectrum |= _exact_ntk_traces(run, stats) if exact else _hutchinson_ntk_traces(run, probe)
    with _Timer(seconds, "hessian_trace", show):
        hessian = _hessian(run, hess_batches, stats)
    with _Timer(seconds, "hessian_top_eigenvalue", show):
        top = top_eigenvalues(model, probe, stats, cfg.power_iters, seed, accelerator, _HESSIAN_BATCH)
        del stats  # the kept Jacobian
    hessian["top_eigenvalue"] = top
    if not top.get("converged", True):
        notes.append(f"the top Hessian eigenvalue did not converge in {cfg.power_iters} iterations")
    with _Timer(seconds, "intrinsic_dim", show):
        intrinsic = _intrinsic(model, id_data, layer, cfg, seed, notes)

    C, T, d = float(spectrum["d_lambda"]), float(hessian["normalized_trace"]), float(intrinsic["twonn"]["d"])
    try:
        bound = stated_bound(C, T, n_train, d)
    except ValueError as err:
        bound = None
        notes.append(f"no stated bound: {err} (T_opt <= 0 means an indefinite Hessian, e.g. off a minimum)")
    seconds["total"] = sum(seconds.values())
    settings = {
        "estimate": cfg.model_dump(),
        "seed": seed,
        "num_processes": world,
        "probe_samples_shared": shared["samples_shared"],
        "probe_samples": batch_size_of(probe[0]),
        "num_groups": len(per_group),
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    return Estimates(
        C_arch=C,
        T_opt=T,
        n=n_train,
        d_eff=d,
        bound=bound,
        hessian_top_eigenvalue=float(top["eigenvalue"]),
        ntk=spectrum,
        hessian=hessian,
        intrinsic_dim=intrinsic,
        groups=per_group,
        top_groups_ntk=_top(per_group, "ntk_trace"),
        top_groups_hessian=_top(per_group, "hessian_trace"),
        seconds=seconds,
        settings=settings,
        notes=notes,
    )
