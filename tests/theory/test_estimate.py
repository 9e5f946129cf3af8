"""estimate(): every quantity on real MNIST-1D, train split only; run_estimate_command end to end."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.config import EstimateConfig, RunConfig, config_from_dict
from prunekit.data import DataSplits, load_data
from prunekit.models import build_model
from prunekit.structure import find_groups
from prunekit.theory import Estimates, estimate, stated_bound
from prunekit.theory.estimate import balanced_order
from prunekit.theory.ntk import module_partition

SMALL = EstimateConfig(probe_samples=60, trace_probes=24, hessian_probes=6, power_iters=5, id_samples=400)


class TrainOnly(DataSplits):
    """The real splits, but any touch of validation or test data fails: estimators may read train only."""

    def arrays(self, split: str):
        if split != "train":
            raise AssertionError(f"the estimator read the {split} split")
        return super().arrays(split)

    def labels(self, split: str):
        if split != "train":
            raise AssertionError(f"the estimator read the {split} labels")
        return super().labels(split)

    def loader(self, split: str, *args, **kwargs):
        if split != "train":
            raise AssertionError(f"the estimator opened a {split} loader")
        return super().loader(split, *args, **kwargs)

    def dataset(self, split: str):
        if split != "train":
            raise AssertionError(f"the estimator read the {split} dataset")
        return super().dataset(split)


@pytest.fixture(scope="module")
def splits() -> TrainOnly:
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids oversubscription stalls
    cfg = RunConfig().data.model_copy(update={"max_train_samples": 600})
    s = load_data(cfg, seed=0)
    s.__class__ = TrainOnly
    return s


@pytest.fixture(scope="module")
def model(splits: DataSplits) -> torch.nn.Module:
    cfg = RunConfig().model.model_copy(update={"kwargs": {"width": 6}})
    return build_model(cfg, splits.num_classes, splits.input_shape)


@pytest.fixture(scope="module")
def result(model, splits) -> tuple[Estimates, list]:
    x = torch.from_numpy(splits.arrays("train").inputs[:2])
    groups = find_groups(model, x)
    return estimate(model, splits, SMALL, groups=groups, seed=3), groups


def test_estimate_reports_every_quantity(result, splits) -> None:
    est, groups = result
    assert est.n == splits.n_train == 600
    for v in (est.C_arch, est.T_opt, est.d_eff, est.hessian_top_eigenvalue):
        assert math.isfinite(v)
    assert 0 < est.C_arch <= SMALL.probe_samples  # d_λ counts at most one degree of freedom per input
    assert est.settings["probe_samples"] == SMALL.probe_samples
    assert 1 < est.d_eff < 40  # MNIST-1D signals have length 40
    assert est.bound == pytest.approx(stated_bound(est.C_arch, est.T_opt, est.n, est.d_eff))
    assert est.hessian["num_probes"] == SMALL.hessian_probes
    assert set(est.seconds) >= {"ntk_group_traces", "ntk_gram", "hessian_trace", "hessian_top_eigenvalue"}
    assert all(s >= 0 for s in est.seconds.values())
    # JSON round trip keeps the numbers
    d = json.loads(json.dumps(est.to_dict()))
    assert d["C_arch"] == est.C_arch and d["n"] == 600
    back = Estimates.from_dict(d | {"model_source": "ignored"})
    assert back.to_dict() == d
    with pytest.raises(ValueError, match="estimates format version 99 is newer"):
        Estimates.from_dict(d | {"format_version": 99})
    with pytest.raises(ValueError, match="estimates lack C_arch: not an estimate.json"):
        Estimates.from_dict({k: v for k, v in d.items() if k != "C_arch"})


def test_estimate_per_group_traces_and_top_lists(result) -> None:
    est, groups = result
    names = {g.name for g in groups}
    assert set(est.groups) == names
    for g in groups:
        row = est.groups[g.name]
        assert row["ntk_trace"] > 0 and row["ntk_trace_se"] >= 0
        assert len(row["ntk_unit_traces"]) == g.num_units
        assert "hessian_trace" in row and len(row["hessian_unit_traces"]) == g.num_units
        assert len(row["hessian_unit_traces_se"]) == g.num_units
    top = est.top_groups_ntk
    assert 1 <= len(top) <= 10 and len(top) == min(10, len(groups))
    traces = [r["trace"] for r in top]
    assert traces == sorted(traces, reverse=True)
    assert top[0]["trace"] == max(r["ntk_trace"] for r in est.groups.values())
    assert [r["name"] for r in est.top_groups_hessian][0] == max(
        est.groups, key=lambda g: est.groups[g]["hessian_trace"]
    )


def test_hutchinson_total_matches_the_exact_gram_trace(model, splits) -> None:
    """Negative-control-free invariant: the exact tr Θ (Gram) lies within a few Hutchinson SEs."""
    cfg = SMALL.model_copy(update={"ntk_traces": "hutchinson"})
    est = estimate(model, splits, cfg, groups=module_partition(model), seed=5)
    exact, approx, se = est.ntk["trace"], est.ntk["hutchinson_trace"], est.ntk["hutchinson_trace_se"]
    assert est.ntk["group_traces"] == "hutchinson"
    assert abs(exact - approx) < 4 * se + 1e-9 * exact
    # a parameter partition: group traces add up to the total
    total = sum(r["ntk_trace"] for r in est.groups.values())
    assert total == pytest.approx(approx, rel=1e-9)


def test_exact_group_traces_come_from_the_gram_jacobian(model, splits) -> None:
    """Default: per-group and per-unit NTK traces summed from the Jacobian the Gram is built from."""
    part = estimate(model, splits, SMALL, groups=module_partition(model), seed=5)
    assert part.ntk["group_traces"] == "exact"
    total = sum(r["ntk_trace"] for r in part.groups.values())
    assert total == pytest.approx(part.ntk["trace"], rel=1e-5)  # a partition adds up to tr Θ exactly
    assert all(r["ntk_trace_se"] == 0 for r in part.groups.values())
    x = torch.from_numpy(splits.arrays("train").inputs[:2])
    groups = find_groups(model, x)
    exact = estimate(model, splits, SMALL, groups=groups, seed=5).groups
    cfg = SMALL.model_copy(update={"ntk_traces": "hutchinson", "trace_probes": 200})
    hutch = estimate(model, splits, cfg, groups=groups, seed=5).groups
    for g in exact:
        assert abs(exact[g]["ntk_trace"] - hutch[g]["ntk_trace"]) < 4 * hutch[g]["ntk_trace_se"]
        units_exact = np.asarray(exact[g]["ntk_unit_traces"])
        units_hutch, units_se = (
            np.asarray(hutch[g]["ntk_unit_traces"]),
            np.asarray(hutch[g]["ntk_unit_traces_se"]),
        )
        assert (np.abs(units_exact - units_hutch) < 5 * units_se + 1e-12).all()


def test_gauss_newton_split_agrees_with_plain_hutchinson_and_is_tighter(model, splits) -> None:
    cfg = SMALL.model_copy(update={"hessian_probes": 40})
    split = estimate(model, splits, cfg, seed=2)
    plain = estimate(model, splits, cfg.model_copy(update={"hessian_method": "hutchinson"}), seed=2)
    a, b = split.hessian, plain.hessian
    assert a["method"] == "gauss_newton" and b["method"] == "hutchinson"
    diff = abs(a["normalized_trace"] - b["normalized_trace"])
    assert diff < 4 * math.hypot(a["normalized_trace_se"], b["normalized_trace_se"])
    assert a["normalized_trace_se"] < b["normalized_trace_se"]
    top = a["top_eigenvalue"]
    assert top["start"] == "gauss_newton_eigenvector" and top["gauss_newton"]["eigenvalue"] > 0
    # the top Hessian eigenvalue is close to the Gauss-Newton one near a minimum; both are reported
    assert split.hessian_top_eigenvalue == top["eigenvalue"]


def test_estimate_is_deterministic_and_seed_dependent(model, splits) -> None:
    cfg = SMALL.model_copy(update={"probe_samples": 30, "power_iters": 2})
    a = estimate(model, splits, cfg, seed=1).to_dict()
    b = estimate(model, splits, cfg, seed=1).to_dict()
    c = estimate(model, splits, cfg, seed=2).to_dict()
    for k in ("C_arch", "T_opt", "d_eff", "hessian_top_eigenvalue"):
        assert a[k] == b[k]
    assert a["T_opt"] != c["T_opt"]  # other probes and another probe set


def test_iterable_data_needs_n_and_gives_balanced_probes(model, splits) -> None:
    batches = list(splits.loader("train", 50, shuffle=True, seed=0))
    cfg = SMALL.model_copy(update={"probe_samples": 40, "power_iters": 2})
    with pytest.raises(ValueError, match="pass n"):
        estimate(model, batches, cfg)
    est = estimate(model, iter(batches), cfg, n=600)  # a one-shot iterator works too
    assert est.n == 600 and est.settings["probe_samples"] == 40
    assert est.groups == {} and est.top_groups_ntk == []


def test_duplicated_points_leave_d_eff_and_note_what_could_not_be_estimated(model, splits) -> None:
    """50 training rows, 10 distinct: TwoNN runs on the distinct points; Levina-Bickel (k up to 20)
    cannot, and says so in a note instead of failing the whole estimate."""
    x = torch.from_numpy(splits.arrays("train").inputs[:10]).repeat(5, 1, 1)
    y = torch.from_numpy(splits.labels("train")[:10]).repeat(5)
    cfg = SMALL.model_copy(update={"probe_samples": 20, "trace_probes": 2, "hessian_probes": 2})
    est = estimate(model, [(x, y)], cfg.model_copy(update={"power_iters": 2, "id_samples": 50}), n=50)
    assert est.intrinsic_dim["twonn"]["n_used"] == 10 and math.isfinite(est.d_eff)
    assert est.intrinsic_dim["levina_bickel"] is None
    assert any(n.startswith("no Levina-Bickel estimate") for n in est.notes)


def test_balanced_order_cycles_through_classes() -> None:
    labels = np.array([0] * 50 + [1] * 5 + [2] * 20)
    order = balanced_order(labels, seed=0)
    assert sorted(order.tolist()) == list(range(75))
    first = labels[order[:15]]
    assert np.bincount(first).tolist() == [5, 5, 5]
    assert (balanced_order(labels, 0) == order).all() and not (balanced_order(labels, 1) == order).all()


def test_run_estimate_command_end_to_end(tmp_path: Path, capsys) -> None:
    from prunekit.commands.estimate import run_estimate_command

    cfg = config_from_dict(
        {
            "name": "tiny",
            "data": {"name": "mnist1d", "max_train_samples": 300},
            "model": {"name": "cnn1d", "kwargs": {"width": 4}},
            "train": {"epochs": 1, "batch_size": 50},
            "estimate": {
                "probe_samples": 40,
                "trace_probes": 4,
                "hessian_probes": 4,
                "power_iters": 3,
                "id_samples": 200,
            },
        }
    )
    logger = logging.getLogger("prunekit")
    handlers = list(logger.handlers)
    out = run_estimate_command(cfg, tmp_path / "out")
    assert logger.handlers == handlers  # the progress handler does not outlive the command
    path = tmp_path / "out" / "estimate.json"
    saved = json.loads(path.read_text())
    assert saved["C_arch"] == out["C_arch"] and saved["n"] == 300
    assert "trained for 1" in saved["model_source"]
    assert len(saved["top_groups_ntk"]) == 3  # the three convs of cnn1d (the classifier is never a group)
    assert len(saved["top_groups_hessian"]) == 3
    for key in ("C_arch", "T_opt", "n", "d_eff"):
        assert isinstance(saved[key], (int, float)), key
    # the bound, or why there is none (T_opt <= 0 after one epoch: an indefinite Hessian)
    assert saved["bound"] is not None or any("no stated bound" in n for n in saved["notes"])
    assert set(saved["seconds"]) >= {"ntk_gram", "hessian_trace", "intrinsic_dim", "total"}
    captured = capsys.readouterr()
    for word in ("C_arch", "T_opt", "d_eff", "bound", "top 3 groups by NTK trace", "seconds"):
        assert word in captured.out
    if not handlers:  # progress: one line per estimator (unless a caller's handler already shows it)
        assert "estimated ntk_gram in" in captured.err
    assert not list(path.parent.glob("*.tmp"))  # written atomically, no temp file left


@pytest.mark.filterwarnings("ignore:NTK Jacobian:RuntimeWarning")  # vmap cannot trace HF masks: vjp is used
def test_estimate_on_text_inputs_uses_the_encoder_for_d_eff() -> None:
    """HF dict inputs end to end (tiny BERT, random token ids: only the plumbing is under test here)."""
    from prunekit.testing import tiny_bert

    model = tiny_bert(num_labels=3, layers=1)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(1, 100, (16, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[:, 9:] = torch.randint(0, 2, (16, 3), generator=gen)
        batches.append(
            ({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (16,), generator=gen))
        )
    groups = find_groups(model, batches[0][0])
    cfg = EstimateConfig(probe_samples=24, trace_probes=4, hessian_probes=2, power_iters=2, id_samples=64)
    est = estimate(model, batches, cfg, groups=groups, n=64)
    assert est.intrinsic_dim["representation"] == "bert.encoder"
    assert any("bert.encoder" in note for note in est.notes)
    assert {g.name for g in groups} == set(est.groups)
    assert any(name.endswith(":heads") for name in est.groups)
    assert math.isfinite(est.C_arch) and math.isfinite(est.d_eff)


def test_unknown_id_representation_fails_before_any_estimator(model, splits) -> None:
    cfg = SMALL.model_copy(update={"id_representation": "no.such.layer"})
    with pytest.raises(ValueError, match="estimate.id_representation='no.such.layer'"):
        estimate(model, splits, cfg)


def test_a_model_without_class_logits_is_refused_with_the_fix() -> None:
    """A bare encoder gives (batch, tokens, hidden): no cross-entropy, so no T_opt; say what to add."""
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (4, 5)), torch.nn.Linear(5, 3))
    x, y = torch.randn(16, 20), torch.randint(0, 3, (16,))
    with pytest.raises(ValueError, match=r"class logits shaped \(batch, classes\).*\(16, 4, 3\)"):
        estimate(model, [(x, y)], SMALL.model_copy(update={"probe_samples": 16}), n=16)


def test_run_estimate_command_prefers_the_runs_dense_checkpoint(tmp_path: Path, capsys) -> None:
    """After `prunekit run`, `prunekit estimate` measures the saved dense model instead of training anew."""
    from prunekit.commands.estimate import run_estimate_command
    from prunekit.models import describe
    from prunekit.pruning import save

    cfg = config_from_dict(
        {
            "name": "tiny",
            "data": {"name": "mnist1d", "max_train_samples": 200},
            "model": {"name": "cnn1d", "kwargs": {"width": 4}},
            "train": {"epochs": 5},
            "estimate": {
                "probe_samples": 30,
                "trace_probes": 2,
                "hessian_probes": 2,
                "power_iters": 2,
                "id_samples": 100,
            },
        }
    )
    splits = load_data(cfg.data, seed=0)
    model = build_model(
        cfg.model.model_copy(update={"kwargs": {"width": 3}}), 10, (1, 40)
    )  # not the config's width
    base = describe(cfg.model.model_copy(update={"kwargs": {"width": 3}}), 10, (1, 40))
    save(
        model, tmp_path / "run" / "dense", None, {}, base, torch.from_numpy(splits.arrays("train").inputs[:2])
    )
    out = run_estimate_command(cfg, tmp_path / "run")
    assert out["model_source"].startswith("dense checkpoint")
    assert out["settings"]["params"] == sum(p.numel() for p in model.parameters())
    assert (tmp_path / "run" / "estimate.json").is_file()
    capsys.readouterr()
