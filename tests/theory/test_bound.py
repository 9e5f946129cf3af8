"""The stated bound and its calibration: exact values, exponent recovery, identifiability, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunekit.theory.bound import Calibration, calibrate, stated_bound


def _records(
    rng: np.random.Generator,
    m: int,
    exps: dict[str, float],
    e: float,
    noise: float,
    vary: tuple[str, ...] = ("C", "T", "n", "d_eff"),
) -> list[dict[str, float]]:
    base = {"C": 50.0, "T": 0.3, "n": 4000.0, "d_eff": 9.0}
    out = []
    for _ in range(m):
        r = {k: (base[k] * math.exp(rng.uniform(-1.5, 1.5)) if k in vary else base[k]) for k in base}
        log_gap = e + sum(exps[k] * math.log(r[k]) for k in exps) + noise * rng.standard_normal()
        r["gap"] = math.exp(log_gap)
        out.append(r)
    return out


def test_stated_bound_exact() -> None:
    assert stated_bound(100.0, 0.25, 4000, 10.0) == pytest.approx(math.sqrt(100 * 0.25 / 40000))
    assert stated_bound(1, 1, 1, 1) == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x", None])
def test_stated_bound_rejects_bad_input(bad) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        stated_bound(bad, 1.0, 10, 2.0)
    with pytest.raises(ValueError, match="d_eff"):
        stated_bound(1.0, 1.0, 10, bad)


def test_calibrate_noiseless_is_exact() -> None:
    exps = {"C": 0.7, "T": 0.2, "n": -0.4, "d_eff": 0.3}
    cal = calibrate(_records(np.random.default_rng(0), 12, exps, e=-1.3, noise=0.0))
    for k, v in exps.items():
        assert cal.exponents[k].value == pytest.approx(v, abs=1e-9)
    assert cal.intercept.value == pytest.approx(-1.3, abs=1e-8)
    assert cal.r2 == pytest.approx(1.0)
    assert cal.not_identified == []
    # d_eff with a positive exponent is flagged as opposite to the stated form
    assert not cal.exponents["d_eff"].sign_agrees_with_stated
    assert cal.exponents["C"].sign_agrees_with_stated


def test_calibrate_with_noise_true_values_in_ci() -> None:
    exps = {"C": 0.5, "T": 0.5, "n": -0.5, "d_eff": -0.5}
    hits, total = 0, 0
    for seed in range(20):
        cal = calibrate(_records(np.random.default_rng(seed), 40, exps, e=0.2, noise=0.2))
        for k, v in exps.items():
            lo, hi = cal.exponents[k].ci95
            assert lo < cal.exponents[k].value < hi
            hits += lo <= v <= hi
            total += 1
    # 95 % intervals: expect ~76 of 80; 68 or fewer would be a > 3-sigma miss of the nominal coverage
    assert hits / total > 0.85
    # an interval far from the truth would still be a failure on a single fit with small noise
    cal = calibrate(_records(np.random.default_rng(99), 200, exps, e=0.2, noise=0.05))
    for k, v in exps.items():
        assert abs(cal.exponents[k].value - v) < 0.05


def test_constant_n_and_d_eff_are_not_identified() -> None:
    exps = {"C": 0.5, "T": 0.5, "n": -0.5, "d_eff": -0.5}
    recs = _records(np.random.default_rng(1), 30, exps, e=0.0, noise=0.1, vary=("C", "T"))
    cal = calibrate(recs)
    assert cal.not_identified == ["n", "d_eff"]
    assert set(cal.exponents) == {"C", "T"}
    for k in ("C", "T"):
        lo, hi = cal.exponents[k].ci95
        assert lo <= 0.5 <= hi
    assert cal.fixed_values == {"n": pytest.approx(4000.0), "d_eff": pytest.approx(9.0)}
    # predictions at the fitted n/d_eff work; a new n cannot be extrapolated
    assert cal.predict(50.0, 0.3, 4000, 9.0) > 0
    with pytest.raises(ValueError, match="differs from the only value"):
        cal.predict(50.0, 0.3, 8000, 9.0)
    assert any("constant" in note for note in cal.notes)


def test_collinear_predictor_is_not_identified() -> None:
    rng = np.random.default_rng(2)
    recs = _records(rng, 25, {"C": 0.5, "T": 0.5}, e=0.0, noise=0.1, vary=("C",))
    for r in recs:  # T moves in lock-step with C: only their product is identifiable
        r["T"] = r["C"] ** 2
        r["gap"] *= r["T"] ** 0.5 / 0.3**0.5  # the gap now carries T's factor too
    cal = calibrate(recs)
    assert "T" in cal.not_identified and "C" in cal.exponents
    # the slope of C absorbs T's: 0.5 + 2 * 0.5
    assert cal.exponents["C"].value == pytest.approx(1.5, abs=0.1)


def test_predict_and_json_round_trip() -> None:
    exps = {"C": 0.6, "T": 0.4, "n": -0.5, "d_eff": -0.2}
    recs = _records(np.random.default_rng(3), 30, exps, e=0.5, noise=0.1)
    cal = calibrate(recs)
    back = Calibration.from_json(cal.to_json())
    assert back.to_dict() == cal.to_dict()
    with pytest.raises(ValueError, match="calibration format version 99 is newer"):
        Calibration.from_dict(cal.to_dict() | {"format_version": 99})
    with pytest.raises(ValueError, match="calibration lacks exponents"):
        Calibration.from_dict({k: v for k, v in cal.to_dict().items() if k != "exponents"})
    r = recs[0]
    p = cal.predict(r["C"], r["T"], r["n"], r["d_eff"])
    assert back.predict(r["C"], r["T"], r["n"], r["d_eff"]) == pytest.approx(p)
    # arrays broadcast
    C = np.array([r["C"] for r in recs])
    out = cal.predict(C, 0.3, 4000.0, 9.0)
    assert out.shape == (30,) and np.all(out > 0)
    # the prediction follows the fitted exponent
    ratio = cal.predict(2 * r["C"], r["T"], r["n"], r["d_eff"]) / p
    assert ratio == pytest.approx(2 ** cal.exponents["C"].value)
    assert "exponent" in cal.summary()


def test_exact_fit_without_dof_has_no_se() -> None:
    recs = _records(np.random.default_rng(4), 5, {"C": 0.5, "T": 0.5, "n": -0.5, "d_eff": -0.5}, 0.0, 0.1)
    cal = calibrate(recs)
    assert cal.dof == 0 and cal.exponents["C"].se is None and cal.exponents["C"].ci95 is None


@pytest.mark.parametrize(
    "records, match",
    [
        ([], "at least 2 records"),
        ([{"C": 1, "T": 1, "n": 10, "d_eff": 2, "gap": 0.1}], "at least 2 records"),
        ([{"C": 1, "T": 1, "n": 10, "d_eff": 2}] * 3, "no 'gap'"),
        ([{"C": 1, "T": -1, "n": 10, "d_eff": 2, "gap": 0.1}] * 3, "positive finite"),
        ([{"C": 1, "T": 1, "n": 10, "d_eff": 2, "gap": 0.0}] * 3, "gap"),
        ({"C": 1}, "list of mappings"),
        ([(1, 1, 10, 2, 0.1)] * 3, "mapping"),
    ],
)
def test_calibrate_rejects_bad_records(records, match) -> None:
    with pytest.raises(ValueError, match=match):
        calibrate(records)


def test_calibrate_accepts_estimate_field_names() -> None:
    recs = _records(np.random.default_rng(5), 10, {"C": 0.5, "T": 0.5}, 0.0, 0.0, vary=("C", "T"))
    long = [
        {"C_arch": r["C"], "T_opt": r["T"], "n": r["n"], "d_eff": r["d_eff"], "gap": r["gap"]} for r in recs
    ]
    assert calibrate(long).exponents["T"].value == pytest.approx(0.5)


def test_ablation_predictors_c_alone_and_ct_product() -> None:
    rng = np.random.default_rng(6)
    recs = _records(rng, 40, {"C": 0.4, "T": 0.4}, e=0.1, noise=0.0, vary=("C", "T"))
    ct = calibrate(recs, predictors=["CT"])
    assert ct.predictors == ["CT"] and set(ct.exponents) == {"CT"}
    assert ct.exponents["CT"].value == pytest.approx(0.4, abs=1e-9)  # equal exponents: exact in C·T
    r = recs[0]
    assert ct.predict(C=r["C"], T=r["T"]) == pytest.approx(r["gap"], rel=1e-9)
    c_only = calibrate([{"C": r["C"], "gap": r["gap"]} for r in recs], predictors=("C",))
    assert set(c_only.exponents) == {"C"} and c_only.r2 < 1.0  # T's share is now noise
    assert Calibration.from_json(c_only.to_json()).predict(C=10.0) == pytest.approx(c_only.predict(C=10.0))
    with pytest.raises(ValueError, match="T must be positive"):
        ct.predict(C=1.0)
    with pytest.raises(ValueError, match="predictors"):
        calibrate(recs, predictors=["C", "X"])
    with pytest.raises(ValueError, match="predictors"):
        calibrate(recs, predictors=["C", "C"])
