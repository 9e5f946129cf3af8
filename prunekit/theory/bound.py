"""The stated generalisation bound and its calibration on measured gaps.

The stated form ``gap <= sqrt(C_arch * T_opt / (n * d_eff))`` is a hypothesis, not a law (DESIGN.md §3).
:func:`stated_bound` computes it exactly; :func:`calibrate` fits the free-exponent form

    log gap = a·log C + b·log T + c·log n + d·log d_eff + e

by ordinary least squares on measured ``(C, T, n, d_eff, gap)`` records and reports each exponent with its
standard error and a 95 % t-interval, so the data decide the exponents (and the sign of d: learning theory
and Pope et al. 2021 say a larger intrinsic dimension makes generalisation *harder*, the opposite of the
stated form's ``d = -1/2``).

Identifiability: within one task n and d_eff are the same for every candidate, so their columns are constant
and cannot be told apart from the intercept. A predictor whose column is constant, or a linear combination
of the intercept and the predictors already in the fit (taken in the order C, T, n, d_eff), is reported in
``not_identified`` and left out of the design; its effect is absorbed into the intercept, so predictions
are only valid at the value it had in the fit (constant columns are remembered and checked in ``predict``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PREDICTORS: tuple[str, ...] = ("C", "T", "n", "d_eff")
# Predictors a fit may use: the four above, and their product "CT" for the ablation C·T (DESIGN.md §3).
_INPUTS: dict[str, tuple[str, ...]] = {
    "C": ("C",),
    "T": ("T",),
    "CT": ("C", "T"),
    "n": ("n",),
    "d_eff": ("d_eff",),
}
# The exponents of the stated form, for comparison with the fitted ones.
STATED_EXPONENTS: dict[str, float] = {"C": 0.5, "T": 0.5, "CT": 0.5, "n": -0.5, "d_eff": -0.5}
# Accepted spellings of each field in a record (Estimates.to_dict() uses the long names).
_ALIASES: dict[str, tuple[str, ...]] = {
    "C": ("C", "C_arch"),
    "T": ("T", "T_opt"),
    "n": ("n",),
    "d_eff": ("d_eff", "d"),
    "gap": ("gap",),
}
CALIBRATION_FORMAT_VERSION = 1


def _positive_finite(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0.0:
        raise ValueError(
            f"{name} must be a positive finite number, got {value!r}: check the estimator output"
        )
    return x


def readable_version(d: Mapping[str, Any], current: int, what: str) -> int:
    """The ``format_version`` of a saved ``what`` (0 when absent); ValueError if newer than ``current``."""
    version = int(d.get("format_version", 0))
    if version > current:
        raise ValueError(f"{what} format version {version} is newer than this prunekit; upgrade prunekit")
    return version


def stated_bound(C: float, T: float, n: float, d_eff: float) -> float:
    """``sqrt(C·T / (n·d_eff))``, the stated bound with every constant set to 1."""
    c = _positive_finite("C (C_arch)", C)
    t = _positive_finite("T (T_opt)", T)
    nn_ = _positive_finite("n", n)
    d = _positive_finite("d_eff", d_eff)
    return math.sqrt(c * t / (nn_ * d))


@dataclass
class Exponent:
    """One fitted exponent: estimate, standard error and 95 % confidence interval (t-distribution)."""

    value: float
    se: float | None  # None when the fit has no residual degrees of freedom
    ci95: tuple[float, float] | None
    stated: float  # the stated form's exponent, for comparison

    @property
    def sign_agrees_with_stated(self) -> bool:
        return (self.value > 0) == (self.stated > 0)


@dataclass
class Calibration:
    """The fitted form ``gap ≈ exp(e) · C^a · T^b · n^c · d_eff^d`` (identified predictors only)."""

    exponents: dict[str, Exponent]  # identified predictors only
    intercept: Exponent
    not_identified: list[str]
    fixed_values: dict[str, float]  # constant predictors: the single value seen in the fit
    r2: float | None  # None when all gaps are equal (no variance to explain)
    residual_std: float | None
    num_records: int
    dof: int
    notes: list[str] = field(default_factory=list)
    predictors: list[str] = field(default_factory=lambda: list(PREDICTORS))
    format_version: int = CALIBRATION_FORMAT_VERSION

    def predict(self, C: Any = None, T: Any = None, n: Any = None, d_eff: Any = None) -> Any:
        """The calibrated gap for scalars or arrays (numpy broadcasting); inputs the fit did not use may be None.

        A constant predictor must equal the value it had in the fit: the fit says nothing about how the gap
        moves with it (a ValueError says so rather than extrapolating silently).
        """
        given = {"C": C, "T": T, "n": n, "d_eff": d_eff}
        values = {}
        for name in self.predictors:
            v = np.ones((), dtype=np.float64)
            for k in _INPUTS[name]:
                a = np.asarray(given[k] if given[k] is not None else np.nan, dtype=np.float64)
                if not np.all(np.isfinite(a)) or np.any(a <= 0):
                    raise ValueError(f"{k} must be positive and finite to predict a gap, got {given[k]!r}")
                v = v * a
            values[name] = v
        for k, fixed in self.fixed_values.items():
            if not np.allclose(values[k], fixed, rtol=1e-6, atol=0.0):
                raise ValueError(
                    f"{k}={values[k]!r} differs from the only value seen in the calibration ({fixed:g}): "
                    f"calibrate on records that vary {k} before predicting at a new {k}"
                )
        log_gap = np.asarray(self.intercept.value, dtype=np.float64)
        for k, ex in self.exponents.items():
            log_gap = log_gap + ex.value * np.log(values[k])
        out = np.exp(log_gap)
        return float(out) if out.ndim == 0 else out

    def summary(self) -> str:
        lines = [f"calibrated on {self.num_records} records (dof {self.dof}), R² = {_fmt(self.r2)}"]
        for k, ex in self.exponents.items():
            ci = f"[{ex.ci95[0]:.3g}, {ex.ci95[1]:.3g}]" if ex.ci95 else "n/a"
            sign = "" if ex.sign_agrees_with_stated else "  (sign opposite to the stated form)"
            lines.append(
                f"  {k:6s} exponent {ex.value:+.3g} ± {_fmt(ex.se)}  95% CI {ci}  stated {ex.stated:+g}{sign}"
            )
        if self.not_identified:
            lines.append(f"  not identified (absorbed in the intercept): {', '.join(self.not_identified)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, ex in self.exponents.items():
            d["exponents"][k]["sign_agrees_with_stated"] = ex.sign_agrees_with_stated
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        version = readable_version(d, CALIBRATION_FORMAT_VERSION, "calibration")
        required = ("exponents", "intercept", "not_identified", "fixed_values", "num_records", "dof")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(
                f"calibration lacks {', '.join(missing)}: not a saved Calibration; fit it again with calibrate()"
            )

        def ex(e: Mapping[str, Any]) -> Exponent:
            ci = e.get("ci95")
            return Exponent(
                float(e["value"]), e.get("se"), tuple(ci) if ci is not None else None, float(e["stated"])
            )

        return cls(
            exponents={k: ex(v) for k, v in d["exponents"].items()},
            intercept=ex(d["intercept"]),
            not_identified=list(d["not_identified"]),
            fixed_values={k: float(v) for k, v in d["fixed_values"].items()},
            r2=d.get("r2"),
            residual_std=d.get("residual_std"),
            num_records=int(d["num_records"]),
            dof=int(d["dof"]),
            notes=list(d.get("notes", [])),
            predictors=list(d.get("predictors", PREDICTORS)),
            format_version=version,
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls.from_dict(json.loads(text))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _field(record: Mapping[str, Any], key: str, i: int) -> float:
    for alias in _ALIASES[key]:
        if alias in record:
            return _positive_finite(f"record {i}: {alias}", record[alias])
    raise ValueError(f"record {i} has no '{key}' (keys: {sorted(record)}); give C, T, n, d_eff and gap")


def _records_to_arrays(
    records: Sequence[Mapping[str, Any]], predictors: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(records, Mapping) or not isinstance(records, Sequence):
        raise ValueError("records must be a list of mappings with keys C, T, n, d_eff, gap")
    rows, gaps = [], []
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(
                f"record {i} is a {type(r).__name__}; give a mapping with keys C, T, n, d_eff, gap"
            )
        rows.append([math.prod(_field(r, k, i) for k in _INPUTS[p]) for p in predictors])
        gaps.append(_field(r, "gap", i))
    return np.log(np.asarray(rows, dtype=np.float64)), np.log(np.asarray(gaps, dtype=np.float64))


def _select_columns(X: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Greedy rank test in predictor order: (kept, constant, collinear) column indices."""
    m = X.shape[0]
    kept: list[int] = []
    constant: list[int] = []
    collinear: list[int] = []
    for j in range(X.shape[1]):
        col = X[:, j]
        # Constant up to rounding: log-values equal to ~1e-9 relative (n stored as float, d_eff re-read from JSON).
        if np.ptp(col) <= 1e-9 * max(1.0, float(np.max(np.abs(col)))):
            constant.append(j)
            continue
        design = np.column_stack([np.ones(m), X[:, kept + [j]]])
        # Standardise before the rank test so that scale differences do not hide or fake collinearity.
        scale = np.linalg.norm(design, axis=0)
        if np.linalg.matrix_rank(design / scale, tol=1e-8) == design.shape[1]:
            kept.append(j)
        else:
            collinear.append(j)
    return kept, constant, collinear


def calibrate(records: Sequence[Mapping[str, Any]], predictors: Sequence[str] = PREDICTORS) -> Calibration:
    """Fit ``log gap = a·log C + b·log T + c·log n + d·log d_eff + e`` by least squares.

    ``records``: mappings with positive ``C`` (or ``C_arch``), ``T`` (or ``T_opt``), ``n``, ``d_eff`` and
    ``gap`` (only the fields the predictors use are read). ``predictors``: a subset of C, T, CT (the
    product C·T as one predictor), n, d_eff, for ablations such as C alone, T alone or C·T. Needs at
    least one more record than fitted coefficients for standard errors; with exactly as many the fit is
    exact and standard errors are None.
    """
    from scipy import stats  # scipy is heavy; only calibration needs it

    predictors = list(predictors)
    unknown = [p for p in predictors if p not in _INPUTS]
    if unknown or not predictors or len(set(predictors)) != len(predictors):
        raise ValueError(
            f"predictors {predictors} are invalid: choose distinct names from {', '.join(_INPUTS)}"
        )
    X, y = _records_to_arrays(records, predictors)
    m = X.shape[0]
    if m < 2:
        raise ValueError(f"calibration needs at least 2 records, got {m}: measure more candidates")
    kept, constant, collinear = _select_columns(X)
    design = np.column_stack([np.ones(m), X[:, kept]])
    p = design.shape[1]
    if m < p:
        raise ValueError(
            f"{m} records cannot identify {p} coefficients ({', '.join(predictors[j] for j in kept)} and the "
            "intercept): measure more candidates"
        )
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    rss = float(resid @ resid)
    tss = float(((y - y.mean()) ** 2).sum())
    dof = m - p
    notes: list[str] = []
    if dof > 0:
        sigma2 = rss / dof
        cov = sigma2 * np.linalg.inv(design.T @ design)
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        tq = float(stats.t.ppf(0.975, dof))
        residual_std: float | None = math.sqrt(sigma2)
    else:
        se = None
        residual_std = None
        notes.append("as many records as coefficients: the fit is exact and has no standard errors")

    def make(idx: int, stated: float) -> Exponent:
        v = float(coef[idx])
        if se is None:
            return Exponent(v, None, None, stated)
        s = float(se[idx])
        return Exponent(v, s, (v - tq * s, v + tq * s), stated)

    exponents = {predictors[j]: make(i + 1, STATED_EXPONENTS[predictors[j]]) for i, j in enumerate(kept)}
    not_identified = [predictors[j] for j in sorted(constant + collinear)]
    for j in constant:
        notes.append(f"{predictors[j]} is constant across records: its exponent is not identifiable")
    for j in collinear:
        notes.append(
            f"{predictors[j]} is collinear with the other predictors: its exponent is not identifiable"
        )
    if "d_eff" in exponents and not exponents["d_eff"].sign_agrees_with_stated:
        notes.append(
            "d_eff's exponent is positive: a larger intrinsic dimension gives a larger gap (as in Pope et al. 2021)"
        )
    return Calibration(
        exponents=exponents,
        intercept=make(0, 0.0),
        not_identified=not_identified,
        fixed_values={predictors[j]: float(np.exp(X[0, j])) for j in constant},
        r2=(1.0 - rss / tss) if tss > 0 else None,
        residual_std=residual_std,
        num_records=m,
        dof=dof,
        notes=notes,
        predictors=predictors,
    )
