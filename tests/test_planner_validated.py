"""The theory planner on the validity study's best predictor (best_predictor.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from test_planner_theory import build_redundant

from prunekit.config import config_from_dict
from prunekit.metrics import count_params
from prunekit.planner import Target, from_prune_config, make_plan, planner_config
from prunekit.planner.registry import PlanContext
from prunekit.planner.validated import PREDICTORS, predictor_fn, read_predictor_file
from prunekit.pruning import apply_plan_
from prunekit.structure import Plan
from prunekit.theory import proxies

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "results" / "validity").glob("*/best_predictor.json"))


@pytest.fixture(scope="module")
def redundant():
    return build_redundant()


def _file(tmp_path: Path, **fields) -> str:
    d = {"format_version": 1, "predictor": "synflow", "direction": 1, "mean_aligned_tau": 0.5} | fields
    p = tmp_path / "best_predictor.json"
    p.write_text(json.dumps(d))
    return str(p)


def _ctx(model, groups, batches, x) -> PlanContext:
    from prunekit.planner.allocate import SizeModel

    cfg = planner_config("theory", quantity="synflow")
    return PlanContext(model, groups, Target("params", 0.3), batches, SizeModel(model, groups, x), cfg)


def test_a_planted_synflow_file_cuts_the_provably_redundant_units_first(redundant, tmp_path):
    model, x, groups, batches = redundant
    fc1 = next(g for g in groups if g.layer == "fc1")
    saved = 20 * fc1.params_per_unit / count_params(model)
    # OBD ranks the copies (zero outgoing weights) strictly last; the default l2 does not
    cfg = planner_config(
        "theory",
        predictor_file=_file(tmp_path),
        fractions=(0.75, 0.5, 0.25),
        min_keep_fraction=0.1,
        importance="hessian",
    )
    assert cfg.quantity == "validated"  # the default once a file is given
    plan = make_plan(model, groups, Target("params", saved), cfg, batches=batches, example_inputs=x)
    assert all(len(plan.keep[g.name]) == g.num_units for g in groups if g is not fc1), plan.keep
    assert set(plan.keep[fc1.name]) >= set(range(32)), "an original unit went before a redundant copy"
    assert plan.extra["quantity"] == "validated" and plan.extra["validated"]["predictor"] == "synflow"
    # removing the copies leaves synflow unchanged: the path's value stays at the dense one
    values = [s["value"] for s in plan.extra["path"]]
    assert values[1] == pytest.approx(values[0], rel=1e-9) and values[0] < 0  # -synflow is minimised
    assert plan.predicted_gap is not None and plan.predicted_gap >= 0


@pytest.mark.parametrize("name", ["synflow", "removed_weight_mass", "snip"])
def test_masked_values_equal_the_study_definition_on_the_pruned_model(redundant, name):
    """At fixed weights, the masked model's predictor equals the physically pruned model's."""
    model, x, groups, batches = redundant
    model = copy.deepcopy(model)
    ctx = _ctx(model, groups, batches, x)
    fc2 = next(g for g in groups if g.layer == "fc2")
    removed = {fc2.name: [0, 3, 5, 30]}
    value = predictor_fn(ctx, name, 128, False, predict=None)(removed)
    keep = {g.name: [u for u in range(g.num_units) if u not in removed.get(g.name, [])] for g in groups}
    plan = Plan(keep=keep, num_units={g.name: g.num_units for g in groups}, target={}, planner="test")
    pruned = apply_plan_(copy.deepcopy(model), plan, x, groups=groups).eval()
    xs = torch.cat([b[0] for b in batches])[:128]
    ys = torch.cat([b[1] for b in batches])[:128]
    expected = {
        "synflow": lambda: proxies.synflow(pruned, xs),
        "removed_weight_mass": lambda: proxies.weight_mass(model) - proxies.weight_mass(pruned),
        "snip": lambda: proxies.snip(pruned, xs, ys),
    }[name]()
    assert value == pytest.approx(expected, rel=1e-5)
    assert value != pytest.approx(predictor_fn(ctx, name, 128, False, predict=None)({}), rel=1e-3)


def test_a_planted_weight_mass_file_thins_the_group_a_hand_count_picks(redundant, tmp_path):
    """The first move of the path thins the group whose next units hold the least weight mass per
    parameter freed, computed here by hand from the pruned models."""
    model, x, groups, batches = redundant
    cfg = planner_config(
        "theory",
        predictor_file=_file(tmp_path, predictor="removed_weight_mass", direction=-1),
        importance="l2",
        step=0.25,
    )
    plan = make_plan(model, groups, Target("params", 0.1), cfg, batches=batches, example_inputs=x)
    first = plan.extra["path"][1]["keep"]
    moved = next(name for name, k in first.items() if k < next(g for g in groups if g.name == name).num_units)
    from prunekit.planner.importance import unit_scores

    scores = unit_scores(model, groups, batches, "l2")
    dense_mass, dense_params = proxies.weight_mass(model), count_params(model)
    cost = {}
    for g in groups:
        drop = int(g.num_units * 0.25)
        order = sorted(range(g.num_units), key=lambda i: (scores[g.name][i].item(), -i))[:drop]
        keep = {h.name: list(range(h.num_units)) for h in groups}
        keep[g.name] = [u for u in range(g.num_units) if u not in order]
        p = Plan(keep=keep, num_units={h.name: h.num_units for h in groups}, target={}, planner="hand")
        pruned = apply_plan_(copy.deepcopy(model), p, x, groups=groups)
        cost[g.name] = (dense_mass - proxies.weight_mass(pruned)) / (dense_params - count_params(pruned))
    assert moved == min(cost, key=cost.get), (moved, cost)


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "does not exist: point it at results/validity/<task>/best_predictor.json"),
        ("{not json", r"is not valid JSON \("),
        ("[1, 2]", "holds a JSON list, not an object"),
        ({"predictor": "params", "direction": 1}, "names predictor 'params', which cannot drive"),
        ({"predictor": "random", "direction": 1}, "it ranks by chance"),
        (
            {"predictor": "magic", "direction": 1},
            "names unknown predictor 'magic'; the planner evaluates synflow",
        ),
        ({"predictor": "synflow", "direction": 0}, "has direction=0; it must be 1"),
        ({"predictor": "synflow", "direction": -1}, "a-priori direction is 1"),
        ({"predictor": "synflow", "direction": 1, "format_version": 9}, "newer than this prunekit"),
        ({"predictor": "synflow", "direction": 1, "mean_aligned_tau": "high"}, "mean_aligned_tau='high'"),
        (
            {"predictor": "synflow", "direction": 1, "calibration": {"r2": 1}},
            "calibration that does not read",
        ),
    ],
)
def test_bad_predictor_files_are_refused_in_one_line_at_config_load(tmp_path, content, match):
    path = tmp_path / "best.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    prune = config_from_dict(
        {"prune": {"planner": "theory", "planner_options": {"predictor_file": str(path)}}}
    ).prune
    with pytest.raises(ValueError, match=match) as err:
        from_prune_config(prune)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"quantity": "validated"}, "quantity 'validated' needs predictor_file"),
        (
            {"quantity": "risk", "predictor_file": "x.json"},
            "predictor_file is read only with quantity 'validated'",
        ),
        (
            {"quantity": "val_loss"},
            "unknown quantity 'val_loss'; choose one of bound, calibrated, risk, validated",
        ),
    ],
)
def test_inconsistent_options_fail_in_one_line(options, match):
    prune = config_from_dict({"prune": {"planner": "theory", "planner_options": options}}).prune
    with pytest.raises(ValueError, match=match) as err:
        from_prune_config(prune)
    assert "\n" not in str(err.value)


def test_the_option_flows_from_yaml_and_the_committed_files_read(tmp_path):
    assert COMMITTED, "results/validity/*/best_predictor.json are committed"
    for path in COMMITTED:
        v = read_predictor_file(path)
        assert v.predictor in PREDICTORS and v.direction == PREDICTORS[v.predictor]
    text = f"prune:\n  planner: theory\n  planner_options:\n    predictor_file: {COMMITTED[0]}\n"
    (tmp_path / "run.yaml").write_text(text)
    from prunekit.config import load_config

    cfg = from_prune_config(load_config(tmp_path / "run.yaml").prune)
    assert (cfg.quantity, cfg.predictor_file) == ("validated", str(COMMITTED[0]))
    assert planner_config("theory").quantity is None  # no file: chosen at plan time (theory.py)


def test_the_planner_directions_are_the_studys():
    from prunekit.studies.predictors import DIRECTIONS

    assert {k: DIRECTIONS[k] for k in PREDICTORS} == PREDICTORS


def test_without_a_file_the_default_is_synflow_on_real_inputs(redundant):
    model, x, groups, batches = redundant
    cfg = planner_config("theory", fractions=(0.5,), min_keep_fraction=0.1)
    plan = make_plan(model, groups, Target("params", 0.2), cfg, batches=batches, example_inputs=x)
    assert plan.extra["quantity"] == "synflow" and plan.extra["quantity_chosen_by"].startswith("default")
    explicit = planner_config("theory", quantity="risk", fractions=(0.5,), min_keep_fraction=0.1)
    plan = make_plan(model, groups, Target("params", 0.2), explicit, batches=batches, example_inputs=x)
    assert plan.extra["quantity"] == "risk" and "quantity_chosen_by" not in plan.extra
