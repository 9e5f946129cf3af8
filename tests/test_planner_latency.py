"""Latency targets: the MAC-proxy search, the stability check and the error paths.

Timing is never asserted. The search is tested on a deterministic latency of the real pruned model (a
fixed overhead plus a cost per MAC of the model after real surgery, counted by ``count_macs``), so what
is checked is the search logic, not the machine; the real ``measure_latency`` is used only where the
assertion does not depend on how fast it ran (the refusal of an unstable measurement, the record).
"""

from __future__ import annotations

import copy
import json
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch

from prunekit.config import ConfigError, ModelConfig, config_from_dict, load_config
from prunekit.metrics import count_macs, measure_latency
from prunekit.metrics.latency import MEDIAN_ERROR_LIMIT, check_stable, median_error, spread_of
from prunekit.models import build_model
from prunekit.planner import LayerLimit, Target, make_plan, planner_config
from prunekit.planner.latency import AIM, search_macs_saved
from prunekit.planner.target import LATENCY_TOLERANCE
from prunekit.pruning import apply_plan_
from prunekit.structure import find_groups


@cache
def _setup():
    model = build_model(ModelConfig(name="cnn1d", kwargs={"width": 32}), 5, (1, 40), seed=0).eval()
    x = torch.randn(2, 1, 40, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 1, 40, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(2)]
    return model, x, find_groups(model, x), data


OVERHEAD_MS, MS_PER_MAC = 0.05, 1e-5  # a CPU-like shape: a fixed cost per pass plus work


class CostModel:
    """Deterministic latency of the real pruned model (overhead + MACs after real surgery), as stats."""

    def __init__(self, model, x, groups, spread: float = 0.0):
        self.model, self.x, self.groups, self.spread, self.calls = model, x, groups, spread, []

    def pruned(self, plan):
        if plan is None:
            return self.model
        return apply_plan_(copy.deepcopy(self.model), plan, self.x, groups=self.groups)

    def ms(self, plan) -> float:
        return OVERHEAD_MS + MS_PER_MAC * count_macs(self.pruned(plan), self.x)

    def __call__(self, plan):
        self.calls.append(plan)
        ms = self.ms(plan)
        return {"median_ms": ms, "spread": self.spread, "repeats": 30, "threads": 1}


# ------------------------------------------------------------------------ the spread check, on numbers


def test_spread_is_iqr_over_median_and_the_check_says_what_to_do():
    s = spread_of([1.0, 1.0, 1.1, 1.2, 0.9, 1.0, 1.05, 0.95])
    assert s["median_ms"] == pytest.approx(1.0) and s["spread"] == pytest.approx((1.0625 - 0.9875) / 1.0)
    steady = {**s, "repeats": 30, "threads": 1}
    check_stable(steady)  # 0.93 * 0.075 / sqrt(30) = 1.3 % < 2 %: passes
    assert median_error(steady) == pytest.approx(0.93 * s["spread"] / 30**0.5)
    noisy = spread_of([1.0, 2.0, 1.0, 3.0, 1.0, 2.5, 0.8, 1.7]) | {"repeats": 8, "threads": 1}
    with pytest.raises(ValueError) as err:
        check_stable(noisy, what="the dense model")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("latency of the dense model cannot be measured stably")
    assert f"spread (IQR / median) {noisy['spread']:.2f} over 8 repeats at 1 thread(s)" in msg
    need = int(msg.split("latency_repeats to ")[1].split()[0])
    assert (
        median_error({**noisy, "repeats": need})
        <= MEDIAN_ERROR_LIMIT
        < median_error({**noisy, "repeats": need - 1})
    )
    with pytest.raises(ValueError, match="non-empty list of finite times"):
        spread_of([])


# ------------------------------------------------------------------------------- the search, on numbers


def test_search_lands_within_aim_on_a_line_and_stops_early():
    line = lambda s: 0.2 + 0.8 * (1 - s)  # noqa: E731  overhead 20 %, the rest falls with MACs
    tried = search_macs_saved(line, keep=0.5, top=0.9)
    assert tried[0] == (0.9, pytest.approx(line(0.9)))  # reachability first
    assert abs(tried[-1][1] / 0.5 - 1) <= AIM and len(tried) <= 3


def test_search_reports_an_unreachable_target_with_one_measurement():
    tried = search_macs_saved(lambda s: 0.7 + 0.3 * (1 - s), keep=0.5, top=0.8)
    assert len(tried) == 1 and tried[0][1] > 0.5 * (1 + LATENCY_TOLERANCE)


def test_search_on_a_staircase_ends_and_brackets_the_target():
    stairs = lambda s: 1.0 - 0.25 * int(s * 4)  # noqa: E731  four coarse widths: 1, .75, .5, .25
    tried = search_macs_saved(stairs, keep=0.6, top=0.99, max_steps=10)
    assert len(tried) <= 10
    assert min(abs(r - 0.6) for _, r in tried) == pytest.approx(0.1)  # no width nearer exists


# ----------------------------------------------------------------- through make_plan, real surgery


@pytest.mark.parametrize("planner", ["uniform", "global_magnitude"])
@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_latency_target_is_met_within_five_percent(planner: str, keep: float):
    model, x, groups, data = _setup()
    cost = CostModel(model, x, groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within tolerance: no warning
        plan = make_plan(
            model,
            groups,
            Target("latency", 1 - keep),
            planner,
            batches=data,
            example_inputs=x,
            latency_of=cost,
        )
    assert plan.target == {"metric": "latency", "saved": pytest.approx(1 - keep)}
    achieved = cost.ms(plan) / cost.ms(None)  # independently: the surgery of the returned plan
    assert abs(achieved / keep - 1) <= LATENCY_TOLERANCE
    lat = plan.extra["latency"]
    assert lat["within_tolerance"] is True and lat["achieved_keep"] == pytest.approx(achieved)
    assert plan.extra["achieved"]["latency_ms"] == pytest.approx(cost.ms(plan))
    assert cost.calls[0] is None  # the dense model is measured before any candidate
    assert cost.calls[-2:][0] is None and cost.calls[-1] is not None  # re-measured back to back
    assert len(lat["search"]) <= 10 and lat["search"][0]["macs_saved"] == lat["macs_saved_max"]


def test_latency_plans_on_a_curve_planner_too():
    model, x, groups, data = _setup()
    cost = CostModel(model, x, groups)
    cfg = planner_config("loss_sensitivity", fractions=(0.5,), allocation="curves")
    plan = make_plan(
        model, groups, Target("latency", 0.5), cfg, batches=data, example_inputs=x, latency_of=cost
    )
    assert plan.planner == "loss_sensitivity"
    assert abs(cost.ms(plan) / cost.ms(None) / 0.5 - 1) <= LATENCY_TOLERANCE


# ---------------------------------------------------------------------------------------- bad input


def test_a_target_the_floors_cannot_reach_is_one_line_with_the_measured_latency():
    model, x, groups, data = _setup()
    cost = CostModel(model, x, groups)
    cfg = planner_config("uniform", min_keep_fraction=0.8)
    with pytest.raises(ValueError) as err:
        make_plan(model, groups, Target("latency", 0.7), cfg, example_inputs=x, latency_of=cost)
    msg = str(err.value)
    assert "\n" not in msg and "latency target keep 0.30" in msg and "cannot be met" in msg
    assert "latency_batch_size" in msg and len(cost.calls) == 2  # the dense model, the smallest model


def test_max_below_min_fails_before_anything_is_measured():
    model, x, groups, _ = _setup()
    cost = CostModel(model, x, groups)
    with pytest.raises(ValueError, match="min_keep=0.6 > max_keep=0.4; swap them"):
        planner_config("uniform", layers=({"pattern": "features.0", "min_keep": 0.6, "max_keep": 0.4},))
    cfg = planner_config("uniform", min_keep_fraction=0.5, layers=(LayerLimit("features.0", 0.0, 0.2),))
    with pytest.raises(ValueError, match="max_keep 0.2 allows 6 of 32 units, fewer than its minimum 16"):
        make_plan(model, groups, Target("latency", 0.5), cfg, example_inputs=x, latency_of=cost)
    assert cost.calls == []


def test_an_unstable_real_measurement_is_refused_before_any_pruning():
    model, x, groups, _ = _setup()
    calls = []

    def real(plan):  # a real measurement of the real model, with a deliberately tiny repeat count
        calls.append(plan)
        return measure_latency(model, x, repeats=4, warmup=0, threads=1)

    from prunekit.planner.latency import plan_for_latency

    def plan_macs(saved):
        raise AssertionError("nothing may be planned after an unstable dense measurement")

    with pytest.raises(ValueError) as err:  # a tiny limit: any real spread is too much
        plan_for_latency(
            model,
            groups,
            Target("latency", 0.5),
            planner_config("uniform"),
            real,
            plan_macs,
            x,
            error_limit=1e-6,
        )
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("latency of the dense model cannot be measured stably: median ")
    assert "over 4 repeats at 1 thread(s)" in msg and "raise evaluate.latency_repeats to" in msg
    assert calls == [None]  # only the dense model was measured; nothing was planned or cut


def test_a_latency_target_without_a_measurement_and_a_scheduled_latency_run_are_refused():
    model, x, groups, _ = _setup()
    with pytest.raises(ValueError, match="a latency target needs latency_of"):
        make_plan(model, groups, Target("latency", 0.5), "uniform", example_inputs=x)
    with pytest.raises(ConfigError, match="metric latency is planned one shot"):
        config_from_dict({"prune": {"metric": "latency", "schedule": {"name": "linear"}}})
    assert config_from_dict({"prune": {"metric": "latency"}}).prune.metric == "latency"


def test_the_run_measures_candidates_as_evaluate_says():
    # prunekit.task's latency_of (what `prune.metric: latency` plans with): a real measurement of the
    # real pruned copy, on evaluate's latency batch, repeats and threads; the model itself is left whole
    from prunekit.task import Task, latency_of

    sets = ["train.epochs=0", "evaluate.latency_batch_size=3", "evaluate.latency_repeats=4"]
    task = Task(load_config(Path(__file__).parent.parent / "configs" / "quickstart.yaml", sets))
    model = task.build_dense().eval()
    groups = find_groups(model, task.example)
    plan = make_plan(model, groups, Target("macs", 0.5), "uniform", example_inputs=task.example)
    measure = latency_of(task, model, groups)
    dense, pruned = measure(None), measure(plan)
    assert dense["repeats"] == pruned["repeats"] == 4 and dense["threads"] == 1
    assert task.latency_example.shape[0] == 3
    assert sum(p.numel() for p in model.parameters()) == plan.extra["achieved"]["dense_params"]


def test_prunekit_plan_shows_the_latency_search():
    from prunekit.commands.plan import _level_entry, level_lines, summary_lines
    from prunekit.planner.allocate import SizeModel

    model, x, groups, _ = _setup()
    plan = make_plan(
        model,
        groups,
        Target("latency", 0.5),
        "uniform",
        example_inputs=x,
        latency_of=CostModel(model, x, groups),
    )
    entry = _level_entry(0.5, plan, groups, SizeModel(model, groups, x), "latency", 0.1)
    out = {
        "config": "t",
        "planner": "uniform",
        "metric": "latency",
        "dense": {"source": "untrained"},
        "levels": [entry],
        "schedule": {"name": "one_shot", "levels": {"0.5": [{"target_saved": 0.5, "train_steps": 10}]}},
        "planning_seconds": 0.1,
    }
    (line,) = [ln for ln in summary_lines(out) if ln.startswith("  latency:")]
    lat = plan.extra["latency"]
    assert f"target {lat['target_ms']:.3f} ms (keep 0.50)" in line and line.endswith("within 5 %: yes")
    assert "spread 0.00, median ±0.0%" in line
    (js,) = level_lines(out)
    assert json.loads(js)["latency"]["search"] == lat["search"]


def test_a_candidate_that_cannot_be_measured_stably_is_retried_then_refused():
    model, x, groups, _ = _setup()

    class LoadArrives(CostModel):  # the machine gets busy after the dense measurement
        def __call__(self, plan):
            return super().__call__(plan) | ({"spread": 5.0} if self.calls[1:] else {})

    cost = LoadArrives(model, x, groups)
    with pytest.raises(ValueError) as err:
        make_plan(model, groups, Target("latency", 0.5), "uniform", example_inputs=x, latency_of=cost)
    msg = str(err.value)
    assert msg.startswith("latency of the candidate at ") and "cannot be measured stably" in msg
    assert len(cost.calls) == 1 + 3  # the dense model, then the first candidate three times


def test_each_candidate_is_timed_against_the_dense_model_just_before_it():
    model, x, groups, _ = _setup()

    class Drifts(CostModel):  # the machine runs at half speed for the first measurement only
        def __call__(self, plan):
            stats = super().__call__(plan)
            return stats | {"median_ms": stats["median_ms"] * (2.0 if len(self.calls) == 1 else 1.0)}

    cost = Drifts(model, x, groups)
    plan = make_plan(model, groups, Target("latency", 0.5), "uniform", example_inputs=x, latency_of=cost)
    lat = plan.extra["latency"]
    dense = cost.ms(None)
    # the first candidate follows the slow dense measurement, every later one a fresh dense timing
    assert lat["search"][0]["dense_ms"] == pytest.approx(2 * dense)
    assert all(s["dense_ms"] == pytest.approx(dense) for s in lat["search"][1:])
    assert all(c is None for c in cost.calls[2:-2:2])  # dense, candidate, dense, candidate, ...
    assert lat["within_tolerance"] and abs(lat["achieved_keep"] / 0.5 - 1) <= LATENCY_TOLERANCE


def test_a_target_inside_a_latency_step_names_the_step_and_the_fix():
    model, x, groups, _ = _setup()

    class Cliff(CostModel):  # like a CPU conv kernel: the cost halves once fewer MACs than 60 % remain
        def ms(self, plan):
            macs = count_macs(self.pruned(plan), self.x)
            return 2 * OVERHEAD_MS + MS_PER_MAC * macs * (
                1.0 if macs > 0.6 * count_macs(self.model, self.x) else 0.4
            )

    cost = Cliff(model, x, groups)
    with pytest.warns(UserWarning) as record:
        plan = make_plan(model, groups, Target("latency", 0.5), "uniform", example_inputs=x, latency_of=cost)
    (msg,) = [str(w.message) for w in record if "latency target keep" in str(w.message)]
    assert "\n" not in msg and "the latency steps from keep" in msg and "round_to" in msg, msg
    assert plan.extra["latency"]["within_tolerance"] is False
