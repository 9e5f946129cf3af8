"""The schedule loop: budgets shared exactly, predicted gaps held, stopping where they cannot be held."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from prunekit.config import EstimateConfig, ScheduleConfig, config_from_dict
from prunekit.metrics import count_params
from prunekit.planner import Target, make_plan, planner_config
from prunekit.pruning import apply_plan_
from prunekit.schedule import PACE, linear_targets, relative, run_schedule, share
from prunekit.structure import find_groups
from prunekit.task import with_unit_bounds


def _data(n: int = 384, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 48),
        torch.nn.ReLU(),
        torch.nn.Linear(48, 48),
        torch.nn.ReLU(),
        torch.nn.Linear(48, 4),
    )


class Harness:
    """Real planning (uniform), surgery, Estimator predictions and SGD steps on a small MLP."""

    def __init__(self):
        self.x, self.y = _data()
        self.batches = [(self.x[i : i + 64], self.y[i : i + 64]) for i in range(0, len(self.x), 64)]
        self.model = _model()
        self.train(self.model, 150, 0)
        self.trained = 0

    def plan(self, model, saved, i, bounds=None, planner="uniform"):
        groups = find_groups(model, self.x[:2])
        cfg = planner_config(planner)
        if bounds:
            cfg = with_unit_bounds(cfg, groups, bounds)
        target = Target("params", saved)
        plan = make_plan(model, groups, target, cfg, batches=self.batches[:2], example_inputs=self.x[:2])
        return plan, groups

    def apply(self, model, plan, groups):
        apply_plan_(model, plan, self.x[:2], groups=groups)

    def gap(self, model, groups):
        from prunekit.theory.estimator import Estimator

        est = Estimator(
            model.eval(),
            self.batches,
            EstimateConfig(probe_samples=64, id_samples=200),
            groups=find_groups(model, self.x[:2]),
            n=len(self.x),
        )
        return lambda plan: est.predict(plan).bound

    def train(self, model, steps, i):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        for s in range(steps):
            xb, yb = self.batches[s % len(self.batches)]
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        self.trained = getattr(self, "trained", 0) + steps
        return {"steps": steps}

    def run(self, cfg: ScheduleConfig, level: float, total: int = 40):
        model = copy.deepcopy(self.model)
        self.trained = 0
        out = run_schedule(
            model, level, cfg, total, self.plan, self.apply, self.gap, self.train, count_params
        )
        return out, model


@pytest.fixture(scope="module")
def h():
    return Harness()


def test_budget_shares_add_up():
    total, used, parts = 101, 0, []
    for i in range(4):
        parts.append(share(total, used, 4 - i))
        used += parts[-1]
    assert sum(parts) == total and max(parts) - min(parts) <= 3
    assert linear_targets(0.9, 3) == pytest.approx([0.3, 0.6, 0.9])
    # 0.5 saved now, 0.75 wanted: remove half of what is left
    assert relative(0.5, 0.75) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["one_shot", "linear", "constant_gap"])
def test_every_schedule_trains_exactly_the_one_shot_budget_and_meets_the_target(h, name):
    cfg = ScheduleConfig(name=name, steps=3, tolerance=10.0, force=True)
    out, model = h.run(cfg, 0.6)
    assert h.trained == 40 and out.total_train_steps == 40
    assert sum(s["train_steps"] for s in out.steps) == 40
    assert abs(1 - count_params(model) / count_params(h.model) - 0.6) <= 0.015
    assert (
        len(out.steps) == {"one_shot": 1, "linear": 3, "constant_gap": 1}[name]
    )  # a loose tolerance: one step
    # one plan from the start to the end, for checkpoints
    assert {g: len(k) for g, k in out.plan.keep.items()} == out.steps[-1]["keep"] or len(out.steps) > 1
    rebuilt = apply_plan_(copy.deepcopy(h.model), out.plan, h.x[:2])
    assert count_params(rebuilt) == count_params(model)


def test_constant_gap_holds_the_prediction_or_stops_and_says_so(h):
    dense_gap = h.gap(h.model, None)(None)
    cfg = ScheduleConfig(name="constant_gap", steps=4, tolerance=0.5)
    out, _ = h.run(cfg, 0.8)
    for s in out.steps:
        assert s["predicted_gap_planned"] <= dense_gap * 1.5 + 1e-9
    assert out.total_train_steps == 40
    if out.status == "held":
        assert out.saved < 0.8 - 0.01 and "force: true" in out.note
    tight, _ = h.run(ScheduleConfig(name="constant_gap", steps=2, tolerance=1e-6), 0.8)
    assert tight.status == "held" and tight.saved < 0.8 and h.trained == 40
    forced, model = h.run(ScheduleConfig(name="constant_gap", steps=2, tolerance=1e-6, force=True), 0.8)
    assert forced.status == "forced" and abs(forced.saved - 0.8) <= 0.015


def test_schedule_section_is_validated_when_the_yaml_is_read():
    cfg = config_from_dict({"prune": {"schedule": {"name": "linear", "steps": 3}}})
    assert cfg.prune.schedule.steps == 3


@pytest.mark.parametrize(
    "raw, fix",
    [
        (
            {"data": {"name": "lm_text"}, "prune": {"schedule": {"name": "linear"}}},
            "prune.schedule.name to one_shot",
        ),
        (
            {"data": {"name": "lm_text"}, "prune": {"schedule": {"chain_levels": True}}},
            "chain_levels to false",
        ),
        ({"prune": {"metric": "latency", "schedule": {"chain_levels": True}}}, "chain_levels to false"),
    ],
)
def test_a_schedule_the_task_cannot_follow_is_one_line_before_any_work(raw, fix):
    from prunekit.errors import UserError
    from prunekit.pipeline import check_schedule

    with pytest.raises(UserError) as err:
        check_schedule(config_from_dict(raw))
    assert fix in str(err.value) and "\n" not in str(err.value)
    check_schedule(config_from_dict({"prune": {"metric": "macs", "schedule": {"chain_levels": True}}}))


def test_run_refuses_a_chained_latency_target_with_exit_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    out = tmp_path / "never"
    args = [sys.executable, "-m", "prunekit", "run", "configs/quickstart.yaml", "--output", str(out)]
    args += ["--set", "prune.metric=latency", "--set", "prune.schedule.name=one_shot"]
    args += ["--set", "prune.schedule.chain_levels=true"]
    proc = subprocess.run(
        args, cwd=root, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1")
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "chain_levels" in proc.stderr
    assert not out.exists()  # nothing written


def test_per_layer_limits_stay_fractions_of_the_dense_widths_on_a_pruned_model():
    from prunekit.planner import LayerLimit, planner_config
    from prunekit.planner.allocate import ceiling_counts, floor_counts
    from prunekit.task import limits_of_the_base

    x, _ = _data(8)
    dense = _model()
    dense_groups = find_groups(dense, x[:2])
    base_units = {g.name: g.num_units for g in dense_groups}  # 48 and 48
    half = make_plan(dense, dense_groups, Target("params", 0.6), "uniform", example_inputs=x[:2])
    pruned = apply_plan_(copy.deepcopy(dense), half, x[:2])
    groups = find_groups(pruned, x[:2])
    first = dense_groups[0].layer
    cfg = planner_config("uniform", min_keep_fraction=0.2, layers=(LayerLimit(first, 0.0, 0.5),))
    rescaled = limits_of_the_base(cfg, groups, base_units)
    floors = floor_counts(groups, rescaled.min_keep_fraction, rescaled.min_units, 1, rescaled.layers)
    ceilings = ceiling_counts(groups, rescaled.layers, 1, floors)
    for g in groups:
        assert g.num_units < base_units[g.name]  # the model is pruned
        assert floors[g.name] == 10  # ceil(0.2 * 48): 20 % of the dense width, not of the current one
    by_layer = {g.layer: g.name for g in groups}
    assert ceilings[by_layer[first]] == min(24, next(g.num_units for g in groups if g.layer == first))
    # the limits of the unpruned model itself are unchanged
    same = limits_of_the_base(cfg, dense_groups, base_units)
    assert floor_counts(dense_groups, same.min_keep_fraction, same.min_units, 1, same.layers) == floor_counts(
        dense_groups, cfg.min_keep_fraction, cfg.min_units, 1, cfg.layers
    )


def test_a_forced_constant_gap_run_still_takes_steps_that_share_out_the_gap_rise(h):
    # a tolerance no step can hold: before, force jumped to the target in one step (a one-shot run)
    out, model = h.run(ScheduleConfig(name="constant_gap", steps=3, tolerance=1e-6, force=True), 0.8)
    assert out.status == "forced" and abs(out.saved - 0.8) <= 0.015
    assert len(out.steps) > 1 and out.total_train_steps == 40 == h.trained
    one_shot_gap = h.gap(h.model, None)(h.plan(h.model, 0.8, 0)[0])
    # the first step aims at a third of the rise to the one-shot plan's gap, so it stops short of it
    assert out.steps[0]["saved"] < 0.8 - 0.05
    # ... yet never less than an equal split of the way left, so the cut is not back-loaded
    assert out.steps[0]["saved"] >= 0.8 / 3 - 0.02
    assert out.steps[0]["predicted_gap_planned"] < one_shot_gap


@pytest.mark.parametrize("name", ["linear", "constant_gap"])
def test_every_intermediate_step_is_held_on_the_way_to_its_destination(h, name):
    # global magnitude is myopic: left alone, each step thins whichever layer looks cheapest now
    calls = []

    def plan_fn(model, saved, i, bounds=None):
        plan, groups = h.plan(model, saved, i, bounds, planner="global_magnitude")
        calls.append((i, saved, bounds, plan))
        return plan, groups

    cfg = ScheduleConfig(name=name, steps=3, tolerance=1e-6, force=True)
    model = copy.deepcopy(h.model)
    out = run_schedule(model, 0.85, cfg, 30, plan_fn, h.apply, h.gap, h.train, count_params)
    assert abs(out.saved - 0.85) <= 0.015 and len(out.steps) == 3
    held = [c for c in calls if c[2]]
    assert held, "no intermediate step was planned on the way to a destination"
    for i, saved, bounds, plan in held:
        _, whole_way, _, destination = next(c for c in calls if c[0] == i and c[2] is None)
        share_of_way = saved / whole_way  # both relative to the step's starting model
        assert share_of_way < 1
        for g, kept in plan.keep.items():
            fewest, most = bounds[g]
            assert fewest == len(destination.keep[g]) and fewest <= len(kept) <= most
            n = plan.num_units[g]
            if int(PACE * share_of_way * (n - fewest)) >= 1:  # a group the destination cuts moves too
                assert len(kept) < n
