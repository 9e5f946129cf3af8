"""The theory-guided planner and its two ablations: widths from sensitivity curves, units from scores.

- ``theory``: curves of a quantity of the masked model at fixed weights. ``validated`` (the default when
  ``predictor_file`` is given): the predictor the validity study measured to rank pruned models best,
  read from its ``best_predictor.json`` (:mod:`prunekit.planner.validated`); a predictor by name
  (``synflow``, ``removed_weight_mass``, ...); or the theory's own, from the
  :class:`~prunekit.theory.estimator.Estimator`: ``bound`` (the stated bound), ``calibrated`` (a
  :class:`~prunekit.theory.bound.Calibration` file's gap) or ``risk`` (the masked model's probe training
  loss + the calibrated gap, or the stated one without a calibration);
- ``loss_sensitivity``: the same allocator on the probe training loss alone (no theory);
- ``gap_sensitivity``: the same allocator on the predicted gap alone (no fit term).

Within a group, the lowest-scored units go first (``importance``, scores divided by the group mean: raw
scores are never compared across groups). ``Plan.predicted_gap`` is the predicted gap of the planned
model (masked at the dense weights), for the planners that predict one.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from prunekit.planner.allocate import keep_indices, layer_normalised
from prunekit.planner.importance import get_criterion, unit_scores
from prunekit.planner.masked import adapted_bn, loss_fn, probe
from prunekit.planner.registry import PlanContext, PlannerConfig, register_planner
from prunekit.planner.sensitivity import (
    Removed,
    allocate_by_curves,
    ascending_units,
    greedy_path,
    land_on_path,
    sensitivity_curves,
)
from prunekit.planner.validated import PREDICTORS, predictor_fn, read_predictor_file
from prunekit.structure.masking import mask_groups

THEORY_QUANTITIES = ("bound", "calibrated", "risk")
# a predictor by name: the study's definition, its a-priori direction (bound and risk are the theory's)
NAMED = tuple(p for p in PREDICTORS if p not in THEORY_QUANTITIES)
QUANTITIES = (*THEORY_QUANTITIES, "validated", *NAMED)
# With no predictor_file: synflow. The stated bound did not predict (validity study, within-budget
# aligned Kendall tau -0.28 on MNIST-1D, -0.20 on Fashion-MNIST; risk +0.27 / -0.08), so, as issue 10
# asks, the default moved to the predictor that validated best: synflow, +0.49 on MNIST-1D (the best
# there) and +0.29 on Fashion-MNIST (second to removed weight mass, +0.54; over both tasks synflow
# 0.39, removed weight mass 0.35). On the benchmark it ties risk at a third of the planning time and,
# like risk, stays below uniform and LAMP (results/benchmark.md). A predictor_file overrides it.
# synflow needs real-valued tensor inputs (an all-ones input): for token ids / dict inputs the default
# falls back to the theory's risk, and the plan records which one it used (plan.extra["quantity"]).
DEFAULT_QUANTITY = "synflow"
FALLBACK_QUANTITY = "risk"


@dataclass(frozen=True)
class SensitivityConfig(PlannerConfig):
    """Options every curve-driven planner shares. ``fractions``: the keep fractions each group's curve
    is measured at; ``importance``: the within-group unit score; ``probe_samples``: probe-set size."""

    # fixed-weight sensitivities rank a thin layer as cheap long after fine-tuning could recover it (on
    # the quickstart's validation split a 5 % floor let them cut a 64-channel conv to 4: 85.8 % against
    # 93.5 % with this floor, 93 % params saved): the floor is part of the method, on by default
    min_keep_fraction: float = 0.15
    # which units go within a group: l2, not OBD / Hessian scores (the default before). A conv followed
    # by BatchNorm is scale-invariant, so its weights' second-order terms say little about removing a
    # whole channel, and a Fisher diagonal of a well-fit model is carried by its few misfit examples.
    # On MNIST-1D (theory_validated_band0 against theory_validated_hessian, 3 seeds,
    # results/benchmark.md) l2 won on the validation split at 85 / 93 / 97 % params saved (96.0 / 95.3 /
    # 80.8 against 95.5 / 93.4 / 72.3) and on test (96.47 / 95.20 / 78.63 against 95.40 / 93.50 /
    # 73.07). On Fashion-MNIST ResNet-20 (theory_validated_fashion_band0 against _hessian) Hessian units
    # won at 85 % (80.15 against 77.58) and collapsed at 93 / 97 % (65.05 / 50.96 against 71.91 /
    # 69.79): l2 is the choice that never collapsed
    importance: str = "l2"
    fractions: tuple[float, ...] = (0.8, 0.6, 0.45, 0.3, 0.2, 0.12, 0.06)
    probe_samples: int = 256
    # re-estimate BatchNorm statistics of each masked variant on the probe batches (weights stay
    # fixed): stale statistics make a thinned model look broken where fine-tuning would not find it so
    adapt_bn: bool = True
    # "curves": separable per-group curves + greedy on their lower hull (cheap: groups x fractions
    # evaluations, shared by every level); "path": joint greedy thinning re-measured after every move
    # (sees interactions; ~groups evaluations per move, the path shared by every level)
    allocation: str = "path"
    step: float = 0.25  # "path": each move thins a group by this fraction of its units
    # each group keeps between uniform/band and uniform*band of its units, uniform being the one keep
    # fraction that meets the target: the sensitivities move widths within a trust region around it
    # (0: no band). Fixed-weight sensitivities know what the current weights carry, not what
    # fine-tuning will recover, and far from uniform they were wrong: unbanded, every curve planner cut
    # MNIST-1D's middle conv to its floor. Band 2 was tried on MNIST-1D (85 / 93 / 97 % params saved,
    # 3 seeds: 96.30 / 95.53 / 78.83 against 96.47 / 95.20 / 78.63 unbanded), then held out: Fashion-MNIST
    # ResNet-20 79.46 / 76.20 / 70.62 against 77.58 / 71.91 / 69.79 (validation 80.3 / 77.5 / 71.3
    # against 78.6 / 73.4 / 70.9), MNIST-1D large 98.61 / 97.95 / 95.26 against 98.56 / 98.16 / 95.40
    # (results/benchmark.md: theory_validated* against theory_validated*_band0)
    band: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        get_criterion(self.importance)
        fr = tuple(self.fractions)
        if not fr or any(not isinstance(f, (int, float)) or not 0.0 < f < 1.0 for f in fr):
            raise ValueError(f"fractions={list(fr)} must be keep fractions in (0, 1), e.g. [0.75, 0.5, 0.25]")
        object.__setattr__(self, "fractions", tuple(float(f) for f in fr))
        if isinstance(self.probe_samples, bool) or not isinstance(self.probe_samples, int):
            raise ValueError(f"probe_samples={self.probe_samples!r} must be an integer >= 1")
        if self.probe_samples < 1:
            raise ValueError(f"probe_samples={self.probe_samples} must be an integer >= 1")
        if self.allocation not in ("curves", "path"):
            raise ValueError(f"allocation='{self.allocation}' is not one of curves, path")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, float)) or not 0 < self.step < 1:
            raise ValueError(f"step={self.step!r} must be a fraction in (0, 1)")
        if (
            isinstance(self.band, bool)
            or not isinstance(self.band, (int, float))
            or (self.band != 0 and self.band < 1)
        ):
            raise ValueError(f"band={self.band!r} must be 0 (off) or a factor >= 1, e.g. 2")
        if not isinstance(self.adapt_bn, bool):
            raise ValueError(f"adapt_bn={self.adapt_bn!r} must be true or false")


@dataclass(frozen=True)
class LossSensitivityConfig(SensitivityConfig):
    """The allocator on the masked model's probe training loss alone: the no-theory ablation."""


@dataclass(frozen=True)
class GapSensitivityConfig(SensitivityConfig):
    """The allocator on the predicted gap alone (calibrated with ``calibration``, else the stated bound)."""

    calibration: str | None = None


@dataclass(frozen=True)
class TheoryConfig(SensitivityConfig):
    """``quantity``: ``validated`` (the default when ``predictor_file`` is given: the predictor of the
    validity study's ``best_predictor.json``), a predictor by name (:data:`NAMED`; without a file the
    default is ``synflow``, ``risk`` for token inputs: :data:`DEFAULT_QUANTITY`), ``risk``, ``bound``
    or ``calibrated`` (needs ``calibration``, a JSON file from ``prunekit.theory.calibrate().to_json()``)."""

    quantity: str | None = None
    calibration: str | None = None
    predictor_file: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        q = self.quantity
        if q is None and self.predictor_file:
            q = "validated"
            object.__setattr__(self, "quantity", q)
        if q is None:  # the default, chosen at plan time by the model's inputs (default_quantity)
            return
        if q not in QUANTITIES:
            raise ValueError(f"unknown quantity '{q}'; choose one of {', '.join(QUANTITIES)}")
        if q == "calibrated" and not self.calibration:
            raise ValueError("quantity 'calibrated' needs calibration: the path of a Calibration JSON file")
        if q == "validated" and not self.predictor_file:
            raise ValueError(
                "quantity 'validated' needs predictor_file: the path of the validity study's "
                "best_predictor.json, e.g. results/validity/mnist1d/best_predictor.json"
            )
        if self.predictor_file and q != "validated":
            raise ValueError(
                f"predictor_file is read only with quantity 'validated' (given quantity '{q}'); "
                "drop one of them"
            )
        if self.predictor_file:
            read_predictor_file(self.predictor_file)  # a missing or malformed file fails at config load


# ----------------------------------------------------------------------------------- the quantities


def _gap(prediction: Any, calibration: Any) -> float:
    p = prediction
    if calibration is not None:
        return float(calibration.predict(C=p.C_arch, T=p.T_opt, n=p.n, d_eff=p.d_eff))
    return float(p.bound) if p.bound is not None else 0.0  # T_opt <= 0: no stated bound, no gap


def _estimator(ctx: PlanContext, cfg: SensitivityConfig):
    from prunekit.config import EstimateConfig
    from prunekit.theory.estimator import Estimator

    est_cfg = EstimateConfig(probe_samples=cfg.probe_samples)
    if ctx.data is not None:
        return Estimator(ctx.model, ctx.data, est_cfg, groups=ctx.groups, seed=cfg.seed)
    batches = probe(ctx, cfg.probe_samples)
    n = sum(len(labels) for _, labels in batches)
    return Estimator(ctx.model, batches, est_cfg, groups=ctx.groups, n=n, seed=cfg.seed)


def _calibration(path: str | None):
    if not path:
        return None
    from pathlib import Path

    from prunekit.theory.bound import Calibration

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"calibration file '{p}' does not exist: write one with Calibration.to_json()")
    return Calibration.from_json(p.read_text())


class _Quantity:
    """removed units -> the planner's quantity (and the predicted gap); the Estimator is built on first use."""

    def __init__(self, ctx: PlanContext, cfg: SensitivityConfig, quantity: str):
        self.ctx, self.cfg, self.quantity = ctx, cfg, quantity
        self._est: Any = None
        # removed units -> Prediction, within one plan: the final gaps often re-ask for a state the
        # curves already measured (the dense start of a path); the same masked model, the same result
        self._memo: dict[tuple, Any] = {}
        self.cal = _calibration(getattr(cfg, "calibration", None))
        self.validated = None
        self.label = quantity
        self.fn = loss_fn(ctx, cfg.probe_samples, cfg.adapt_bn) if quantity == "loss" else None
        name, sign = quantity, -PREDICTORS.get(quantity, 1)
        if quantity == "validated":
            self.validated = v = read_predictor_file(cfg.predictor_file)  # type: ignore[attr-defined]
            name, sign = v.predictor, -v.direction
            self.label = f"validated:{name}:{v.direction}"
            if self.cal is None and v.calibration is not None:  # the study's fit gives the predicted gap
                from prunekit.theory.bound import Calibration

                self.cal = Calibration.from_dict(v.calibration)
            if v.mean_aligned_tau is not None and v.mean_aligned_tau <= 0:
                warnings.warn(
                    f"{v.path}: the best predictor '{name}' has mean aligned tau {v.mean_aligned_tau:.2f} "
                    "<= 0: it ranked pruned models no better than chance on the study's task",
                    stacklevel=2,
                )
        if quantity == "validated" or quantity in NAMED:
            raw = predictor_fn(ctx, name, cfg.probe_samples, cfg.adapt_bn, self._predict)
            self.fn = lambda removed: sign * raw(removed)  # the allocator minimises

    def est(self) -> Any:
        if self._est is None:
            self._est = _estimator(self.ctx, self.cfg)
        return self._est

    def _predict(self, removed: Removed) -> Any:
        memo = _removed_key(removed)
        if memo not in self._memo:
            self._memo[memo] = self._predict_now(removed)
        return self._memo[memo]

    def _predict_now(self, removed: Removed) -> Any:
        est, ctx = self.est(), self.ctx
        if not removed:
            return est.predict(None)
        batches = probe(ctx, self.cfg.probe_samples)
        with mask_groups(ctx.model, ctx.groups, removed), adapted_bn(ctx.model, batches, self.cfg.adapt_bn):
            return est.predict(removed)

    def __call__(self, removed: Removed) -> float:
        if self.fn is not None:
            return self.fn(removed)
        p = self._predict(removed)
        if self.quantity == "risk":
            return float(p.train_loss) + _gap(p, self.cal)
        return _gap(p, self.cal)

    def gap(self, removed: Removed) -> float:
        return _gap(self._predict(removed), self.cal)

    def note(self) -> dict[str, Any]:
        """What drove the plan, for ``plan.extra``."""
        out: dict[str, Any] = {"quantity": self.quantity}
        if self.validated is not None:
            out["validated"] = self.validated.summary()
        if self.quantity != "loss":
            own = getattr(self.cfg, "calibration", None)
            source = "calibration" if own else "the predictor_file's calibration"
            out["predicted_gap_from"] = source if self.cal is not None else "the stated bound"
        return out


# ------------------------------------------------------------------------------- the shared planner

_CACHE: dict[str, Any] = {}  # curves depend on weights + options, not target
# (curve cache key, removed units) -> predicted gap: the plan's own and the dense one do not depend on
# the target either, so a plan repeated on the same weights (another seed, the same level) or another
# level of the same model reuses them instead of re-running the Estimator (two NTK Grams a plan)
_GAPS: dict[tuple, float] = {}


def _removed_key(removed: Removed) -> tuple:
    # empty lists kept: {} is predicted unmasked, {g: []} through the masked, BN-adapted path
    return tuple(sorted((name, tuple(sorted(units))) for name, units in removed.items()))


def _banded(
    ctx: PlanContext, floors: dict[str, int], ceilings: dict[str, int], band: float
) -> tuple[dict[str, int], dict[str, int]]:
    """Floors and ceilings narrowed to [uniform / band, uniform * band] of each group's units."""
    import math

    from prunekit.planner.allocate import uniform_counts
    from prunekit.structure import round_keep

    r = ctx.config.round_to
    uni = uniform_counts(ctx.groups, ctx.sizes, ctx.target, floors, r, ceilings=ceilings)
    lo, hi = {}, {}
    for g in ctx.groups:
        f = uni[g.name] / g.num_units
        low = round_keep(math.ceil(f / band * g.num_units), g.num_units, r, floors[g.name])
        lo[g.name] = min(max(floors[g.name], low), ceilings[g.name], uni[g.name])
        high = (min(g.num_units, math.floor(f * band * g.num_units)) // r) * r
        hi[g.name] = max(min(ceilings[g.name], high), lo[g.name], uni[g.name])
    return lo, hi


def _with_bounds(key: str, bounds: Any) -> str:
    """A weights key narrowed to one allocation's bounds (the path depends on them, a gap does not)."""
    return key if bounds is None else hashlib.sha1((key + repr(bounds)).encode()).hexdigest()


def _cache_key(ctx: PlanContext, cfg: SensitivityConfig, quantity: str) -> str:
    h = hashlib.sha1()
    for name, p in ctx.model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    opts = asdict(cfg)
    h.update(repr((quantity, sorted(opts.items()), [g.name for g in ctx.groups], id(ctx.data))).encode())
    for _, labels in probe(ctx, cfg.probe_samples)[:1]:
        h.update(labels.cpu().numpy().tobytes())
    return h.hexdigest()


def _unit_scores(ctx: PlanContext, cfg: SensitivityConfig) -> dict[str, Any]:
    """Layer-normalised per-unit scores, cached like the curves: they depend on the weights and the
    scored batches, not on the target, so every level and seed planned from one model shares them (a
    Hessian/Fisher pass: 7-13 s of a ResNet-20 plan, results/planning_cost.md)."""
    h = hashlib.sha1(_cache_key(ctx, cfg, "unit_scores").encode())
    for _, labels in list(ctx.batches or [])[: cfg.num_batches]:
        h.update(
            labels.cpu().numpy().tobytes() if isinstance(labels, torch.Tensor) else repr(labels).encode()
        )
    key = "scores:" + h.hexdigest()
    if key not in _CACHE:
        raw = unit_scores(ctx.model, ctx.groups, ctx.batches, cfg.importance, cfg.num_batches, cfg.seed)
        _CACHE[key] = layer_normalised(raw)
    return _CACHE[key]


def _plan_by_curves(ctx: PlanContext, quantity: str) -> tuple[dict[str, list[int]], dict[str, Any]]:
    cfg: SensitivityConfig = ctx.config  # type: ignore[assignment]
    c = cfg
    scores = _unit_scores(ctx, cfg)
    floors, ceilings = ctx.floors(), ctx.ceilings()
    if cfg.band:
        floors, ceilings = _banded(ctx, floors, ceilings, cfg.band)
    quantity_fn = _Quantity(ctx, cfg, quantity)
    weights_key = _cache_key(ctx, cfg, quantity_fn.label)
    key = _with_bounds(weights_key, (floors, ceilings) if cfg.allocation == "path" else None)
    note: dict[str, Any] = {}
    if cfg.allocation == "curves":
        if key not in _CACHE:
            _CACHE[key] = sensitivity_curves(
                ctx.groups, scores, quantity_fn, cfg.fractions, floors, c.round_to
            )
        base, curves = _CACHE[key]
        counts = allocate_by_curves(ctx.groups, ctx.sizes, ctx.target, curves, floors, ceilings, c.round_to)
        note = {"base_value": base, "curves": {name: cv.to_dict() for name, cv in curves.items()}}
    else:
        orders = {g.name: ascending_units(scores[g.name]) for g in ctx.groups}
        path = greedy_path(
            ctx.groups,
            ctx.sizes,
            ctx.target.metric,
            ctx.target.saved,
            quantity_fn,
            orders,
            floors,
            ceilings,
            cfg.step,
            c.round_to,
            _CACHE.get(key),
        )
        _CACHE[key] = path
        counts = land_on_path(ctx.groups, ctx.sizes, ctx.target, path, floors, c.round_to)
        note = {"base_value": path[0][1], "path": [{"keep": k, "value": v} for k, v in path]}
    while len(_CACHE) > 16:
        _CACHE.pop(next(iter(_CACHE)))
    keep = {g.name: keep_indices(scores[g.name], counts[g.name]) for g in ctx.groups}
    note |= {"importance": cfg.importance, "normalised": "layer_mean", **quantity_fn.note()}
    if quantity != "loss":
        kept = {name: set(k) for name, k in keep.items()}
        removed = {
            g.name: [u for u in range(g.num_units) if u not in kept[g.name]]
            for g in ctx.groups
            if len(kept[g.name]) < g.num_units
        }
        # a gap at fixed weights does not depend on the allocation's bounds (each level's band has its
        # own): keyed without them, the dense gap is computed once for every level
        for field, units in (("predicted_gap", removed), ("dense_predicted_gap", {})):
            at = (weights_key, _removed_key(units))
            if at not in _GAPS:
                _GAPS[at] = quantity_fn.gap(units)
            note[field] = _GAPS[at]
        while len(_GAPS) > 64:
            _GAPS.pop(next(iter(_GAPS)))
    return keep, note


def default_quantity(ctx: PlanContext) -> str:
    """synflow where it is defined (real-valued tensor inputs), else risk."""
    inputs = probe(ctx, 1)[0][0]
    real = isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
    return DEFAULT_QUANTITY if real else FALLBACK_QUANTITY


def theory(ctx: PlanContext) -> tuple[dict[str, list[int]], dict[str, Any]]:
    quantity = ctx.config.quantity  # type: ignore[attr-defined]
    if quantity is not None:
        return _plan_by_curves(ctx, quantity)
    quantity = default_quantity(ctx)
    keep, note = _plan_by_curves(ctx, quantity)
    why = "real-valued inputs" if quantity == DEFAULT_QUANTITY else "synflow needs real-valued inputs"
    return keep, note | {"quantity_chosen_by": f"default ({why})"}


def loss_sensitivity(ctx: PlanContext) -> tuple[dict[str, list[int]], dict[str, Any]]:
    return _plan_by_curves(ctx, "loss")


def gap_sensitivity(ctx: PlanContext) -> tuple[dict[str, list[int]], dict[str, Any]]:
    cfg: GapSensitivityConfig = ctx.config  # type: ignore[assignment]
    return _plan_by_curves(ctx, "calibrated" if cfg.calibration else "bound")


def curve_planners() -> Sequence[str]:
    return ("theory", "loss_sensitivity", "gap_sensitivity")


register_planner("theory", TheoryConfig, theory)
register_planner("loss_sensitivity", LossSensitivityConfig, loss_sensitivity)
register_planner("gap_sensitivity", GapSensitivityConfig, gap_sensitivity)
