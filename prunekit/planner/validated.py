"""The theory planner on what the validity study measured to predict best: ``best_predictor.json``.

The validity study (``prunekit validate CONFIG``; committed under ``results/validity/<task>/``) ranks every
predictor by its within-budget Kendall τ with the measured test accuracy and writes the best one into
``best_predictor.json``: ``predictor``, ``direction`` (+1: larger is claimed better), ``mean_aligned_tau``,
``calibration`` (the bound's exponents fitted on that task, or null) and the ``task`` it was measured on.
``planner_options: {quantity: validated, predictor_file: PATH}`` makes that predictor of the *masked model
at fixed weights* the quantity on the theory planner's sensitivity curves, signed so that the allocator
minimises ``-direction * value``; the file's calibration, when there is one, gives the predicted gap.

Each predictor is evaluated as the study defines it (:data:`PREDICTORS`): the zero-cost proxies of
:mod:`prunekit.theory.proxies` on the probe inputs, the removed weight mass, the probe loss, and the
:class:`~prunekit.theory.estimator.Estimator`'s Level-2 quantities. A predictor that is not a function of
which units are masked at fixed weights (:data:`NOT_AT_FIXED_WEIGHTS`) is refused in one line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from prunekit.planner.masked import Removed, loss_fn, masked, probe_tensors
from prunekit.planner.registry import PlanContext
from prunekit.theory import proxies

FORMAT_VERSION = 1
MAX_BYTES = 1 << 20  # a best_predictor.json is a few kB
# a-priori direction (+1: larger claimed better) of every predictor the planner evaluates on a masked
# model; the same as the study's (tests/test_planner_validated.py checks that they agree)
PREDICTORS: dict[str, int] = {
    "synflow": 1,
    "snip": 1,
    "grasp": 1,
    "jacob_cov": 1,
    "removed_weight_mass": -1,
    "probe_loss": -1,
    "bound": -1,
    "bound_without_d_eff": -1,
    "C_arch": -1,
    "T_opt": -1,
    "C_times_T": -1,
    "level2_ntk_trace": 1,
    "risk": -1,  # probe loss + stated bound
}
ESTIMATED = ("bound", "bound_without_d_eff", "C_arch", "T_opt", "C_times_T", "level2_ntk_trace", "risk")
# predictors of the study that say nothing about *which* units to mask at fixed weights, and why
NOT_AT_FIXED_WEIGHTS: dict[str, str] = {
    "params": "at one size it cannot say which units to remove",
    "macs": "it counts operations, it does not say which units carry the function",
    "random": "it ranks by chance",
    "level1_ntk_trace": "it is a screening estimate from the dense Jacobian; level2_ntk_trace is its masked form",
    "val_loss": "it reads the validation split, which the planner does not read",
    "val_accuracy": "it reads the validation split, which the planner does not read",
}


@dataclass(frozen=True)
class ValidatedPredictor:
    """What a ``best_predictor.json`` says, checked."""

    predictor: str
    direction: int
    path: str
    mean_aligned_tau: float | None = None
    per_budget_aligned_tau: Mapping[str, float] | None = None
    goal_met: bool | None = None
    calibration: Mapping[str, Any] | None = None
    task: Mapping[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """For ``plan.extra``: which predictor drove the plan, how well it validated, and where."""
        return {
            "predictor": self.predictor,
            "direction": self.direction,
            "mean_aligned_tau": self.mean_aligned_tau,
            "per_budget_aligned_tau": dict(self.per_budget_aligned_tau or {}),
            "validated_on": dict(self.task or {}),
            "file": self.path,
        }


def evaluable() -> str:
    return ", ".join(PREDICTORS)


def _fail(path: Path, why: str) -> ValueError:
    return ValueError(f"predictor_file '{path}' {why}")


def _load(path: Path) -> dict[str, Any]:
    fix = "write one with `prunekit validate CONFIG` (the study's best_predictor.json)"
    if not path.is_file():
        raise _fail(path, f"does not exist: point it at results/validity/<task>/best_predictor.json or {fix}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise _fail(path, f"is {size} bytes, not a best_predictor.json (a few kB); {fix}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _fail(path, f"is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as err:
        raise _fail(path, f"is not valid JSON ({err.msg}, line {err.lineno}); {fix}") from None
    if not isinstance(d, dict):
        raise _fail(path, f"holds a JSON {type(d).__name__}, not an object; {fix}")
    version = d.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"has format_version {version!r}, not a positive integer; {fix}")
    if version > FORMAT_VERSION:
        raise _fail(path, f"has format_version {version}, newer than this prunekit reads; upgrade prunekit")
    return d


def _predictor(path: Path, d: Mapping[str, Any]) -> tuple[str, int]:
    name, direction = d.get("predictor"), d.get("direction")
    if not isinstance(name, str) or not name:
        raise _fail(path, f"has predictor={name!r}; it must name the predictor that validated best")
    if name in NOT_AT_FIXED_WEIGHTS:
        raise _fail(
            path,
            f"names predictor '{name}', which cannot drive the theory planner ({NOT_AT_FIXED_WEIGHTS[name]}); "
            f"the planner evaluates {evaluable()}: use quantity: risk or another study's file",
        )
    if name not in PREDICTORS:
        raise _fail(path, f"names unknown predictor '{name}'; the planner evaluates {evaluable()}")
    if isinstance(direction, bool) or direction not in (1, -1):
        raise _fail(path, f"has direction={direction!r}; it must be 1 (larger better) or -1 (smaller better)")
    if direction != PREDICTORS[name]:
        raise _fail(
            path,
            f"gives '{name}' direction {direction}, but its a-priori direction is {PREDICTORS[name]}: "
            "the file was edited by hand; write it again with the study",
        )
    return name, int(direction)


def _number(path: Path, d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(path, f"has {key}={v!r}; it must be a finite number or null")
    return float(v)


def read_predictor_file(path: str | Path) -> ValidatedPredictor:
    """The checked contents of a ``best_predictor.json``; ValueError (one line, naming the file) if not."""
    p = Path(path)
    d = _load(p)
    name, direction = _predictor(p, d)
    per_budget = d.get("per_budget_aligned_tau") or {}
    if not isinstance(per_budget, dict):
        raise _fail(p, f"has per_budget_aligned_tau={per_budget!r}; it must be an object of budget: tau")
    per_budget = {str(k): _number(p, per_budget, k) for k in per_budget}
    cal = d.get("calibration")
    if cal is not None:
        from prunekit.theory.bound import Calibration

        try:
            Calibration.from_dict(cal)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise _fail(p, f"has a calibration that does not read ({err}); write the file again") from None
    task = d.get("task")
    return ValidatedPredictor(
        predictor=name,
        direction=direction,
        path=str(p),
        mean_aligned_tau=_number(p, d, "mean_aligned_tau"),
        per_budget_aligned_tau=per_budget,
        goal_met=d.get("goal_met") if isinstance(d.get("goal_met"), bool) else None,
        calibration=cal,
        task=task if isinstance(task, dict) else None,
    )


# ------------------------------------------------------------------------- evaluation on masked models


def _real_inputs(name: str, x: Tensor) -> Tensor:
    if not x.is_floating_point():
        raise ValueError(
            f"predictor '{name}' needs real-valued model inputs (an all-ones input or an input gradient); "
            "this model takes token ids: set prune.planner_options.quantity to risk or snip"
        )
    return x


def _estimated(name: str, p: Any) -> float:
    """One of :data:`ESTIMATED` from an Estimator Prediction, as the study computes it."""
    ct = p.C_arch * p.T_opt
    bound = float(p.bound) if p.bound is not None else 0.0  # T_opt <= 0: no stated bound
    values = {
        "bound": lambda: bound,
        "bound_without_d_eff": lambda: math.sqrt(ct / p.n) if ct > 0 else 0.0,
        "C_arch": lambda: p.C_arch,
        "T_opt": lambda: p.T_opt,
        "C_times_T": lambda: ct,
        "level2_ntk_trace": lambda: p.ntk_trace,
        "risk": lambda: p.train_loss + bound,
    }
    return float(values[name]())


def predictor_fn(
    ctx: PlanContext,
    name: str,
    samples: int,
    adapt_bn: bool,
    predict: Callable[[Removed], Any],
) -> Callable[[Removed], float]:
    """removed units -> predictor ``name`` of the masked model (raw, unsigned).

    ``predict`` maps removed units to an Estimator Prediction of the masked model (the theory planner's),
    used for the estimated predictors only. The data-free ones (synflow, removed weight mass) do not
    depend on BatchNorm statistics, so they skip the re-estimation.
    """
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor '{name}'; the planner evaluates {evaluable()}")
    if name in ESTIMATED:
        return lambda removed: _estimated(name, predict(removed))
    if name == "probe_loss":
        return loss_fn(ctx, samples, adapt_bn)
    if name == "removed_weight_mass":
        dense = proxies.weight_mass(ctx.model)

        def mass(removed: Removed) -> float:
            with masked(ctx, removed, samples, adapt=False) as model:
                return dense - proxies.weight_mass(model)

        return mass
    x, y = probe_tensors(ctx, samples)
    if name in ("synflow", "jacob_cov"):
        _real_inputs(name, x)

    def proxy(removed: Removed) -> float:
        with masked(ctx, removed, samples, adapt=adapt_bn and name != "synflow") as model:
            if name == "synflow":
                return proxies.synflow(model, x)
            if name == "jacob_cov":
                return proxies.jacob_cov(model, x)
            return getattr(proxies, name)(model, x, y)

    return proxy
