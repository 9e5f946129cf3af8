"""The curve planner's reuse of Estimator predictions (within a plan and across plans on the same weights)
gives exactly the plan and the predicted gaps of the straightforward computation (every prediction run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunekit.models import cnn1d, resnet20_1d
from prunekit.planner import Target, make_plan, planner_config
from prunekit.planner import theory as theory_mod
from prunekit.structure import find_groups
from prunekit.theory.estimator import Estimator


def _trained(build, seed: int = 0):
    """A briefly trained net on a fixed random teacher's labels of (1, 40) signals (BN stats non-trivial)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 1, 40, generator=g)
    w = torch.randn(40, 10, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    torch.manual_seed(seed)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return (
        model,
        x[:2],
        find_groups(model, x[:2]),
        [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)],
    )


class _NeverStores(dict):
    """A _GAPS stand-in that remembers nothing: every gap is recomputed (the straightforward path)."""

    def __contains__(self, key: object) -> bool:
        return False

    def __setitem__(self, key: object, value: object) -> None:
        dict.__setitem__(self, key, value)

    def __getitem__(self, key: object) -> object:
        return dict.__getitem__(self, key)


def _plan(model, x, groups, batches, quantity):
    theory_mod._CACHE.clear()  # the curves themselves are cached as before; the test is about the gaps
    cfg = planner_config(
        "theory", quantity=quantity, fractions=(0.6, 0.3), probe_samples=64, min_keep_fraction=0.2
    )
    return make_plan(model, groups, Target("params", 0.6), cfg, batches=batches, example_inputs=x)


_CNN1D = lambda: cnn1d(10, (1, 40), width=8)  # noqa: E731
_RESNET = lambda: resnet20_1d(10, (1, 40), width=0.25)  # noqa: E731


# risk on the residual net takes ~50 s here (174 Estimator calls): the plain net covers risk
@pytest.mark.parametrize(
    ("build", "quantity"),
    [(_CNN1D, "risk"), (_CNN1D, "synflow"), (_RESNET, "synflow")],
    ids=["cnn1d-risk", "cnn1d-synflow", "resnet20_1d-synflow"],
)
def test_reused_predictions_give_the_straightforward_plan(build, quantity, monkeypatch):
    model, x, groups, batches = _trained(build)
    calls = {"n": 0}
    predict = Estimator.predict

    def counted(self, *a, **k):
        calls["n"] += 1
        return predict(self, *a, **k)

    monkeypatch.setattr(Estimator, "predict", counted)
    with monkeypatch.context() as m:  # the straightforward computation: no memo, no gap cache
        m.setattr(theory_mod._Quantity, "_predict", theory_mod._Quantity._predict_now)
        m.setattr(theory_mod, "_GAPS", _NeverStores())
        ref = _plan(model, x, groups, batches, quantity)
    straightforward = calls["n"]

    theory_mod._GAPS.clear()
    calls["n"] = 0
    fast = _plan(model, x, groups, batches, quantity)
    cold = calls["n"]
    calls["n"] = 0
    again = _plan(model, x, groups, batches, quantity)  # the same weights: both gaps are reused
    warm = calls["n"]

    for plan in (fast, again):
        assert plan.keep == ref.keep
        assert plan.predicted_gap == ref.predicted_gap
        assert plan.extra["dense_predicted_gap"] == ref.extra["dense_predicted_gap"]
    assert any(len(k) < g.num_units for g, k in zip(groups, (ref.keep[g.name] for g in groups), strict=True))
    # risk measures the dense start of its path (the final dense gap reuses it; a path may revisit
    # other states too); synflow needs the Estimator only for the two final gaps, which a repeated
    # plan on the same weights reuses
    if quantity == "risk":
        assert cold <= straightforward - 1
    else:
        assert cold == straightforward
    assert warm == cold - (1 if quantity == "risk" else 2)  # risk: the plan's gap (dense was memoized)


def test_removed_key_tells_unmasked_from_masked_nothing():
    # {} is predicted on the model as it is, {g: []} through the masked, BN-adapted path
    assert theory_mod._removed_key({}) != theory_mod._removed_key({"a": []})
    assert theory_mod._removed_key({"a": [3, 1], "b": [2]}) == theory_mod._removed_key(
        {"b": [2], "a": [1, 3]}
    )


def test_unit_scores_are_computed_once_per_weights_and_batches(monkeypatch):
    model, x, groups, batches = _trained(_CNN1D)
    calls = {"n": 0}
    real = theory_mod.unit_scores

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(theory_mod, "unit_scores", counted)
    theory_mod._CACHE.clear()
    cfg = planner_config("theory", quantity="synflow", fractions=(0.6, 0.3), min_keep_fraction=0.2)
    plans = [
        make_plan(model, groups, Target("params", lv), cfg, batches=batches, example_inputs=x)
        for lv in (0.5, 0.7)
    ]
    assert calls["n"] == 1  # two levels, one scoring pass
    theory_mod._CACHE.clear()
    fresh = make_plan(model, groups, Target("params", 0.7), cfg, batches=batches, example_inputs=x)
    assert fresh.keep == plans[1].keep and calls["n"] == 2
    other = [(xb, (yb + 1) % 10) for xb, yb in batches]  # other labels: scored again, not reused
    make_plan(model, groups, Target("params", 0.7), cfg, batches=other, example_inputs=x)
    assert calls["n"] == 3
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # other weights: scored again
    make_plan(model, groups, Target("params", 0.7), cfg, batches=batches, example_inputs=x)
    assert calls["n"] == 4
