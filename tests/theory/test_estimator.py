"""Estimator: built once, asked many times; masked predictions agree with surgically pruned models.

Real MNIST-1D and the quickstart's cnn1d (Conv → BatchNorm → ReLU: zeroing a channel's conv row, BN
weight and bias and the next layer's input column removes it exactly, so Level-2 masking and surgery
must give the same numbers up to float rounding).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunekit.config import EstimateConfig, RunConfig
from prunekit.data import DataSplits, load_data
from prunekit.models import build_model
from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups
from prunekit.theory import Estimator, Prediction, estimate

SMALL = EstimateConfig(probe_samples=48, hessian_probes=6, power_iters=4, id_samples=300)
SEED = 3


class CountingSplits(DataSplits):
    """The real splits, counting every read of the training arrays (the probe set's source)."""

    reads = 0

    def arrays(self, split: str):
        type(self).reads += 1
        return super().arrays(split)

    def labels(self, split: str):
        type(self).reads += 1
        return super().labels(split)


@pytest.fixture(scope="module")
def splits() -> CountingSplits:
    torch.set_num_threads(1)
    cfg = RunConfig().data.model_copy(update={"max_train_samples": 400})
    s = load_data(cfg, seed=0)
    s.__class__ = CountingSplits
    return s


@pytest.fixture(scope="module")
def setup(splits: CountingSplits):
    cfg = RunConfig().model.model_copy(update={"name": "cnn1d", "kwargs": {"width": 6}})
    torch.manual_seed(0)
    model = build_model(cfg, splits.num_classes, splits.input_shape)
    x = torch.from_numpy(splits.arrays("train").inputs[:64])
    model.train()
    with torch.no_grad():  # BatchNorm running statistics that are not the identity
        for _ in range(3):
            model(x)
    model.eval()
    groups = find_groups(model, x[:2])
    est = Estimator(model, splits, SMALL, groups=groups, seed=SEED)
    return model, groups, est, x[:2]


def _removed(groups) -> dict[str, list[int]]:
    # a few units of every group, including the last conv (its channels feed the classifier)
    return {g.name: list(range(0, g.num_units, 3))[: g.num_units - 1] for g in groups}


def _plan(groups, removed) -> Plan:
    keep = {g.name: [u for u in range(g.num_units) if u not in removed.get(g.name, [])] for g in groups}
    return Plan(keep=keep, num_units={g.name: g.num_units for g in groups})


def _same(a: Prediction, b: Prediction) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("seconds"), db.pop("seconds")
    return da == db


def test_estimates_equal_estimate(setup, splits) -> None:
    model, groups, est, _ = setup
    a = est.estimates().to_dict()
    b = estimate(model, splits, SMALL, groups=groups, seed=SEED).to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert est.n == splits.n_train and est.d_eff == a["d_eff"]


def test_predict_none_matches_the_estimates(setup) -> None:
    _, _, est, _ = setup
    full = est.estimates()
    p = est.predict()
    assert p.C_arch == full.C_arch and p.n == full.n and p.d_eff == full.d_eff
    assert p.ntk_trace == pytest.approx(full.ntk["trace"], rel=1e-12)
    assert p.T_opt == pytest.approx(full.hessian["gauss_newton_normalized_trace"], rel=1e-12)
    assert p.T_opt_se == 0.0 and p.removed_units == 0 and p.params == full.settings["params"]
    assert p.bound == pytest.approx(math.sqrt(p.C_arch * p.T_opt / (p.n * p.d_eff)))
    both = est.predict(hessian="full", top_eigenvalue=True)  # the same steps and seeds as estimates()
    assert both.T_opt == full.T_opt and both.T_opt_se == full.hessian["normalized_trace_se"]
    assert both.hessian_top_eigenvalue == full.hessian_top_eigenvalue
    assert 0.0 <= p.train_accuracy <= 1.0 and p.train_loss > 0
    d = p.to_dict()
    assert d["C_arch"] == p.C_arch and d["settings"]["hessian"] == "gauss_newton"


def test_masked_prediction_equals_the_surgically_pruned_model(setup, splits) -> None:
    model, groups, est, x = setup
    removed = _removed(groups)
    masked = est.predict(removed)
    pruned = copy.deepcopy(model)
    apply_plan_(pruned, _plan(groups, removed), x, groups=groups)
    ref = Estimator(pruned, splits, SMALL, seed=SEED).predict()
    assert masked.removed_units == sum(len(v) for v in removed.values())
    assert masked.params == ref.params == sum(p.numel() for p in pruned.parameters())
    for key in ("C_arch", "T_opt", "ntk_trace", "train_loss", "bound"):
        assert getattr(masked, key) == pytest.approx(getattr(ref, key), rel=1e-5), key
    assert abs(masked.train_accuracy - ref.train_accuracy) <= 1 / SMALL.probe_samples  # argmax ties only
    assert masked.C_arch != pytest.approx(est.predict().C_arch, rel=1e-3)  # the masking changed something
    # with the Hutchinson remainder: the probes differ (other shapes), so agreement within the errors
    full_m, full_r = (
        est.predict(removed, hessian="full"),
        Estimator(pruned, splits, SMALL, seed=SEED).predict(hessian="full"),
    )
    assert abs(full_m.T_opt - full_r.T_opt) <= 4 * math.hypot(full_m.T_opt_se, full_r.T_opt_se) + 1e-9
    assert full_m.gauss_newton_T == pytest.approx(masked.T_opt, rel=1e-12)
    # a Plan names the same variant
    assert _same(est.predict(_plan(groups, removed)), masked)


def test_repeated_predictions_reuse_the_probe_set(setup, splits) -> None:
    model, groups, est, _ = setup
    forwards: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    CountingSplits.reads = 0
    try:
        counts = []
        for removed in ({}, _removed(groups), {groups[1].name: [0, 1]}, _removed(groups)):
            before = len(forwards)
            est.predict(removed)
            counts.append(forwards[before:])
    finally:
        handle.remove()
    assert CountingSplits.reads == 0  # no data read: the probe set and d_eff were built once
    assert counts[0] and all(c == counts[0] for c in counts)  # the same passes every time
    Estimator(model, splits, SMALL, seed=SEED)  # the counter does see a (re)build
    assert CountingSplits.reads > 0


def test_weights_restored_bit_for_bit_and_deterministic(setup, splits) -> None:
    model, groups, est, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    removed = _removed(groups)
    a = est.predict(removed, hessian="full", top_eigenvalue=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    again = Estimator(model, splits, SMALL, groups=groups, seed=SEED)
    assert _same(a, again.predict(removed, hessian="full", top_eigenvalue=True))
    other = Estimator(model, splits, SMALL, groups=groups, seed=SEED + 1).predict(removed)
    assert other.C_arch != a.C_arch  # another seed draws another probe set


def test_bad_requests_name_the_fix(setup, splits) -> None:
    model, groups, est, _ = setup
    with pytest.raises(ValueError, match="unknown group 'nope'"):
        est.predict({"nope": [0]})
    with pytest.raises(ValueError, match="out of range"):
        est.predict({groups[0].name: [groups[0].num_units]})
    with pytest.raises(ValueError, match="hessian='bogus' is not one of"):
        est.predict(hessian="bogus")
    with pytest.raises(ValueError, match="need groups"):
        Estimator(model, splits, SMALL).predict({groups[0].name: [0]})
    wrong = _plan(groups, {})
    wrong.num_units[groups[0].name] += 1
    with pytest.raises(ValueError, match="a plan for another model"):
        est.predict(wrong)
