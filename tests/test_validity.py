"""The validity study: its statistics against scipy, planted and random predictors, bad input, and an end-to-end
run on a tiny configuration."""

import json

import numpy as np
import pytest
from scipy import stats

from prunekit.config import ConfigError
from prunekit.studies.ranking import (
    bootstrap_ci,
    kendall_tau,
    noise_ceiling,
    permutation_pvalue,
    rank_agreement,
    spearman_rho,
    top1_regret,
)


@pytest.fixture
def tied_pairs():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, size=40).astype(float)  # many ties
    y = x + rng.normal(0, 2.0, size=40)
    y[:5] = y[0]
    return x, y


def test_kendall_and_spearman_agree_with_scipy(tied_pairs):
    x, y = tied_pairs
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_bootstrap_interval_agrees_with_scipy(tied_pairs):
    x, y = tied_pairs
    ours = bootstrap_ci(x, y, kendall_tau, n_boot=1500, seed=0)
    ref = stats.bootstrap(
        (x, y),
        lambda a, b: stats.kendalltau(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=1500,
        method="percentile",
        random_state=0,
    ).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.05)
    assert ours[1] == pytest.approx(ref.high, abs=0.05)


def test_permutation_pvalue_agrees_with_scipy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=15)
    y = 0.4 * x + rng.normal(size=15)
    ours = permutation_pvalue(x, y, kendall_tau, n_perm=2000, seed=0)
    ref = stats.permutation_test(
        (x, y),
        lambda a, b: stats.kendalltau(a, b).statistic,
        permutation_type="pairings",
        n_resamples=2000,
        random_state=0,
    ).pvalue
    assert ours == pytest.approx(ref, abs=0.03)
    assert 0.005 < ours < 0.5  # neither trivially significant nor trivially null


def test_planted_predictor_has_tau_near_one_and_random_near_zero():
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.8, 0.95, size=40)
    planted = rank_agreement(acc + rng.normal(0, 0.002, size=40), acc, direction=1, n_boot=500, n_perm=500)
    assert planted.tau > 0.9 and planted.aligned_tau > 0.9 and planted.p_value < 0.01
    assert planted.regret < 0.01
    flipped = rank_agreement(-acc, acc, direction=-1, n_boot=200, n_perm=200)
    assert (
        flipped.tau == pytest.approx(-1.0)
        and flipped.aligned_tau == pytest.approx(1.0)
        and flipped.regret == 0
    )
    rand = rank_agreement(rng.normal(size=40), acc, direction=1, n_boot=500, n_perm=500)
    assert abs(rand.tau) < 0.3
    assert rand.tau_ci95[0] < 0 < rand.tau_ci95[1]
    assert rand.p_value > 0.05


def test_regret_and_noise_ceiling_by_hand():
    acc = np.array([0.90, 0.95, 0.80, 0.85])
    assert top1_regret(np.array([3, 1, 0, 2]), acc) == pytest.approx(0.05)
    assert top1_regret(np.array([3, 3, 0, 2]), acc) == pytest.approx(0.025)  # ties averaged
    assert top1_regret(np.array([3, 1, 0, 2]), acc, direction=-1) == pytest.approx(0.15)
    nc = noise_ceiling([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5], n_boot=200)
    assert nc["tau"] == pytest.approx(stats.kendalltau([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5]).statistic)


def test_constant_or_missing_predictor_gives_no_tau():
    r = rank_agreement([1.0] * 10, list(range(10)))
    assert r.tau is None and r.n == 10
    r = rank_agreement([None, 1.0, 2.0, float("nan")] + [None] * 6, list(range(10)))
    assert r.tau is None and r.n == 2


TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "mnist1d", "validation_fraction": 0.1, "batch_size": 256, "max_train_samples": 600},
    "model": {"name": "cnn1d", "kwargs": {"width": 12}},
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.003},
    "finetune": {"epochs": 1, "batch_size": 64, "lr": 0.001},
    "estimate": {"probe_samples": 24, "hessian_probes": 2, "id_samples": 200},
    "validate": {
        "budgets": [0.5],
        "candidates": 8,
        "seeds": [0, 1],
        "proxy_samples": 24,
        "bootstrap": 100,
        "permutations": 100,
        "planners": ["global_magnitude", "random"],  # the theory planners' curves cost more than 40 s here
    },
}


def _write(tmp_path, cfg, name="study.yaml"):
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*argv):
    from prunekit.cli import main

    return main(list(argv))


def test_validate_runs_end_to_end_and_resumes(tmp_path, capsys):
    cfg_path, out = _write(tmp_path, TINY), tmp_path / "out"
    assert _cli("validate", str(cfg_path), "--output", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    group = report["budgets"]["0.5"]
    assert group["n_candidates"] == 8
    assert set(group["predictors"]) >= {
        "bound",
        "C_arch",
        "T_opt",
        "synflow",
        "snip",
        "grasp",
        "jacob_cov",
        "params",
    }
    assert group["predictors"]["bound"]["accuracy"]["tau"] is not None
    assert group["noise_ceiling"]["tau"] is not None
    plans = json.loads((out / "budget-0.5" / "plans.json").read_text())["candidates"]
    saved = [c["plan"]["extra"]["achieved"]["params_saved"] for c in plans]
    assert max(abs(s - 0.5) for s in saved) <= 0.01  # equal size within the toolkit's 1 %
    assert len({c["family"] for c in plans}) >= 3
    best = json.loads((out / "best_predictor.json").read_text())
    assert best["predictor"] in group["predictors"] and best["direction"] in (-1, 1)
    assert (out / "report.md").read_text().count("| predictor |") == 2  # the budget and the pooled table
    assert (out / "tau.png").is_file() and (out / "predictor_vs_accuracy.png").is_file()

    # resume: only the removed measurement is redone
    first = sorted((out / "budget-0.5").glob("*/seed-0.json"))
    first[0].unlink()
    before = {p: p.stat().st_mtime_ns for p in (out / "budget-0.5").glob("*/*.json")}
    assert _cli("validate", str(cfg_path), "--output", str(out)) == 0
    assert first[0].is_file()
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before


@pytest.mark.parametrize(
    "change, words",
    [
        ({"validate": {**TINY["validate"], "candidates": 3}}, "too few for a meaningful Kendall tau"),
        ({"validate": {**TINY["validate"], "seeds": [0]}}, "at least two different seeds"),
        ({"validate": {**TINY["validate"], "budgets": [0.995]}}, "cannot be reached"),
        ({"validate": {**TINY["validate"], "bogus": 1}}, "unknown key 'validate.bogus'"),
    ],
)
def test_bad_study_input_is_one_line_before_any_work(tmp_path, capsys, change, words):
    out = tmp_path / "out"
    assert _cli("validate", str(_write(tmp_path, {**TINY, **change})), "--output", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_test_split_reused_as_validation_is_refused(tmp_path):
    from prunekit.config import config_from_dict
    from prunekit.studies.config import ValidateConfig, check_study

    cfg = config_from_dict(
        {"data": {"name": "csv", "files": {"train": "a.csv", "validation": "b.csv", "test": "b.csv"}}}
    )
    with pytest.raises(ConfigError, match="both the validation and the test split"):
        check_study(cfg, ValidateConfig())


def _records(rng, n, d_eff, m, a=0.3, b=0.2, e=-3.0):
    out = []
    for _ in range(m):
        C, T = rng.uniform(50, 200), rng.uniform(0.1, 2.0)
        gap = np.exp(e) * C**a * T**b * (n / 1000) ** -0.5 * (d_eff / 10) ** -0.5
        pred = {"C_arch": C, "T_opt": T, "n": n, "d_eff": d_eff}
        out.append({"predictors": pred, "seeds": {"0": {"gap": gap}, "1": {"gap": gap}}})
    return out


def test_cross_task_calibration_recovers_a_planted_power_law():
    from prunekit.studies.calibration import cross_task

    rng = np.random.default_rng(0)
    a, b = _records(rng, 8000, 13.0, 20), _records(rng, 4000, 9.0, 20)
    res = cross_task(a, b, ("a", "b"))
    assert res["fit"]["exponents"]["C"]["value"] == pytest.approx(0.3, abs=1e-6)
    assert res["fit"]["exponents"]["T"]["value"] == pytest.approx(0.2, abs=1e-6)
    assert res["r2_fit"] == pytest.approx(1.0) and res["r2_held_out_transfer"] == pytest.approx(1.0)
    assert res["r2_held_out_shape"] == pytest.approx(1.0)
    # pooled, d_eff carries the n difference too (confounded): the fitted exponent is not the stated -1/2
    assert res["d_eff_exponent"] is not None and res["d_eff_note"]
    b[0]["seeds"]["0"]["gap"] = -0.01  # a non-positive mean gap cannot enter log gap
    b[0]["seeds"]["1"]["gap"] = -0.01
    assert cross_task(a, b, ("a", "b"))["dropped_non_positive_gap"]["b"] == 1
