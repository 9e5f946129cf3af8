"""The curve planners (theory, loss_sensitivity, gap_sensitivity) and planner options from YAML."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.config import ConfigError, PruneConfig, config_from_dict
from prunekit.metrics import count_params
from prunekit.planner import Target, from_prune_config, make_plan, planner_config
from prunekit.planner.sensitivity import Curve, allocate_by_curves
from prunekit.pruning import apply_plan_
from prunekit.structure import find_groups


def _teacher_data(seed: int = 0, n: int = 512):
    """A real learning problem: labels of a fixed random two-layer teacher on Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    w1, w2 = torch.randn(16, 32, generator=g), torch.randn(32, 5, generator=g)
    y = (torch.relu(x @ w1) @ w2).argmax(1)
    return x, y


class TwoLayer(nn.Module):
    def __init__(self, a: int, b: int):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, a), nn.Linear(a, b), nn.Linear(b, 5)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def redundant():
    return build_redundant()


def build_redundant():
    """A trained net whose first layer then gets 32 duplicated units that add nothing: each copy has
    the incoming weights of an original unit and zero outgoing weights, so the function is unchanged
    and those 32 units are provably redundant."""
    torch.manual_seed(0)
    x, y = _teacher_data()
    small = TwoLayer(32, 32)
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(small(x), y).backward()
        opt.step()
    big = TwoLayer(64, 32)
    with torch.no_grad():
        big.fc1.weight.copy_(torch.cat([small.fc1.weight, small.fc1.weight]))
        big.fc1.bias.copy_(torch.cat([small.fc1.bias, small.fc1.bias]))
        big.fc2.weight.copy_(torch.cat([small.fc2.weight, torch.zeros_like(small.fc2.weight)], 1))
        big.fc2.bias.copy_(small.fc2.bias)
        big.head.load_state_dict(small.head.state_dict())
    big.eval()
    assert torch.allclose(big(x), small(x), atol=1e-5)
    batches = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 512, 128)]
    groups = find_groups(big, x[:2])
    return big, x[:2], groups, batches


@pytest.mark.parametrize("importance", ["l2", "hessian"])
@pytest.mark.parametrize("planner", ["loss_sensitivity", "theory"])
def test_the_provably_redundant_units_go_first(redundant, planner, importance):
    model, x, groups, batches = redundant
    fc1 = next(g for g in groups if g.layer == "fc1")
    # ask for the share of the params that 20 of the 32 copies hold
    saved = 20 * fc1.params_per_unit / count_params(model)
    cfg = planner_config(planner, fractions=(0.75, 0.5, 0.25), min_keep_fraction=0.1, importance=importance)
    plan = make_plan(model, groups, Target("params", saved), cfg, batches=batches, example_inputs=x)
    # the widths: only the redundant layer is thinned, whatever ranks the units within it
    assert all(len(plan.keep[g.name]) == g.num_units for g in groups if g is not fc1), plan.keep
    if importance == "hessian":
        # OBD scores are exactly 0 for the copies (zero outgoing weights, zero gradient in); l2 only
        # ranks a copy below its own original (its norm is the incoming half), not below every original
        assert set(plan.keep[fc1.name]) >= set(range(32)), "an original unit went before a copy"
    if planner == "theory":
        assert plan.predicted_gap is not None and plan.predicted_gap >= 0


def test_allocation_follows_the_curves_and_lands_the_target():
    torch.manual_seed(0)
    model = TwoLayer(40, 40).eval()
    x = torch.randn(2, 16)
    groups = find_groups(model, x)
    a, b = (g.name for g in sorted(groups, key=lambda g: g.layer))
    from prunekit.planner.allocate import SizeModel

    sizes = SizeModel(model, groups, x)
    cheap = Curve(a, (40, 20, 4), (0.0, 0.01, 0.02))
    dear = Curve(b, (40, 20, 4), (0.0, 1.0, 5.0))
    floors, ceilings = {a: 4, b: 4}, {a: 40, b: 40}
    counts = allocate_by_curves(groups, sizes, Target("params", 0.3), {a: cheap, b: dear}, floors, ceilings)
    assert counts[b] == 40 and counts[a] < 40
    assert abs(sizes.saved(counts, "params") - 0.3) <= 0.01
    ceilings = {a: 40, b: 30}  # a max_keep on b forces units out of it first
    counts = allocate_by_curves(groups, sizes, Target("params", 0.3), {a: cheap, b: dear}, floors, ceilings)
    assert counts[b] <= 30 and abs(sizes.saved(counts, "params") - 0.3) <= 0.01


def test_the_band_holds_every_width_near_the_uniform_one(redundant):
    """``band`` b keeps each group within [u / b, u * b] of uniform's count u; 1 is uniform itself. The
    redundant copies make fc1 the cheap layer: without a band its width leaves that interval."""
    model, x, groups, batches = redundant
    target = Target("params", 0.6)
    uniform = make_plan(model, groups, target, planner_config("uniform"), example_inputs=x)

    def ratios(band: float) -> dict[str, float]:
        opts = {"fractions": (0.75, 0.5, 0.25), "min_keep_fraction": 0.05, "band": band}
        cfg = planner_config("loss_sensitivity", **opts)
        plan = make_plan(model, groups, target, cfg, batches=batches, example_inputs=x)
        assert abs(plan.extra["achieved"]["params_saved"] - 0.6) <= 0.01
        return {g.layer: len(plan.keep[g.name]) / len(uniform.keep[g.name]) for g in groups}

    free = ratios(0)
    assert max(free.values()) > 1.15 and min(free.values()) < 1 / 1.15, free
    assert all(1 / 1.15 - 0.02 <= r <= 1.15 + 0.02 for r in ratios(1.15).values())
    assert ratios(1) == pytest.approx({g.layer: 1.0 for g in groups}, abs=0.02)


def test_per_layer_limits_and_ignored_layers_are_respected(redundant):
    model, x, _, batches = redundant
    groups = find_groups(model, x, ignore=["fc2"])
    assert {g.layer for g in groups} == {"fc1"}
    groups = find_groups(model, x)
    for planner in ("uniform", "lamp", "loss_sensitivity"):
        opts = {"fractions": (0.5, 0.25)} if planner == "loss_sensitivity" else {}
        cfg = planner_config(
            planner,
            layers=[{"pattern": "fc1", "min_keep": 0.75}, {"pattern": "fc*2", "max_keep": 0.5}],
            **opts,
        )
        plan = make_plan(model, groups, Target("params", 0.4), cfg, batches=batches, example_inputs=x)
        by_layer = {g.layer: len(plan.keep[g.name]) / g.num_units for g in groups}
        assert by_layer["fc1"] >= 0.75 and by_layer["fc2"] <= 0.5, (planner, by_layer)
        assert abs(plan.extra["achieved"]["params_saved"] - 0.4) <= 0.01
        pruned = apply_plan_(copy.deepcopy(model), plan, x, groups=groups)
        assert plan.extra["achieved"]["params"] == count_params(pruned)
    with pytest.raises(ValueError, match="max_keep 0.01 allows 0 of 64 units"):
        make_plan(
            model,
            groups,
            Target("params", 0.4),
            planner_config("uniform", layers=[{"pattern": "fc1", "max_keep": 0.01}]),
            example_inputs=x,
        )


def _prune(**section) -> PruneConfig:
    return config_from_dict({"prune": section}).prune


@pytest.mark.parametrize(
    "section,match",
    [
        (
            {"planner": "lamp", "planner_options": {"protect": 2}},
            r"planner 'lamp' has no option 'protect' \(given 2\); allowed options: min_keep_fraction.*",
        ),
        (
            {"planner": "theory", "planner_options": {"quantity": "bogus"}},
            "unknown quantity 'bogus'; choose one of bound, calibrated, risk",
        ),
        (
            {"planner": "theory", "planner_options": {"probe_samples": "many"}},
            r"option probe_samples='many' has the wrong type; it must be int",
        ),
        ({"planner": "global_magnitude", "planner_options": {"norm": "l3"}}, "norm='l3' is not a magnitude"),
        (
            {"planner": "lamp", "importance": "taylor"},
            "planner 'lamp' ranks units by its own scores and takes no importance",
        ),
        ({"planner": "uniform", "importance": "l7"}, "unknown importance criterion 'l7'"),
        ({"planner": "magic"}, "unknown planner 'magic'; known planners: .*theory"),
        (
            {"planner": "uniform", "round_to": 4, "planner_options": {"round_to": 8}},
            "'round_to' is set both in prune and in prune.planner_options",
        ),
    ],
)
def test_bad_planner_options_fail_in_one_line(section, match):
    with pytest.raises(ValueError, match=match) as err:
        from_prune_config(_prune(**section))
    assert "\n" not in str(err.value)


def test_planner_options_reach_the_planner_config():
    cfg = from_prune_config(
        _prune(planner="global_magnitude", planner_options={"norm": "l1", "min_units": 2}), seed=3
    )
    assert (cfg.norm, cfg.min_units, cfg.seed) == ("l1", 2, 3)
    cfg = from_prune_config(
        _prune(
            planner="theory",
            importance="taylor",
            planner_options={"fractions": [0.5, 0.25]},
            layers=[{"pattern": "features.0", "min_keep": 0.5}],
        )
    )
    assert cfg.fractions == (0.5, 0.25) and cfg.importance == "taylor"
    assert cfg.layers[0].pattern == "features.0" and cfg.layers[0].min_keep == 0.5


def test_bad_prune_sections_fail_when_the_yaml_is_read():
    with pytest.raises(ConfigError, match="min_keep 0.8 > max_keep 0.5"):
        _prune(layers=[{"pattern": "fc1", "min_keep": 0.8, "max_keep": 0.5}])
    with pytest.raises(ConfigError, match="unknown key 'prune.layers.0.keep'"):
        _prune(layers=[{"pattern": "fc1", "keep": 0.5}])
    with pytest.raises(ConfigError, match="prune.schedule.name"):
        _prune(schedule={"name": "cosine"})
    with pytest.raises(ConfigError, match="prune.schedule.tolerance"):
        _prune(schedule={"name": "constant_gap", "tolerance": 0})
    with pytest.raises(ConfigError, match="unknown key 'prune.iterative_steps'"):
        _prune(iterative_steps=3)
