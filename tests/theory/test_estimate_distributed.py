"""Data-parallel estimates: probe sharding, exact merging of means and standard errors, a real 2-process launch."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from prunekit.testing import cpu_ddp_launch
from prunekit.theory.distributed import merge_mean_se, rank_seed, reduce_mean_se, shard_size

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "estimate_dp.py"


@pytest.mark.parametrize("total, world", [(0, 1), (7, 1), (7, 2), (64, 3), (5, 8)])
def test_shards_cover_the_probes_once(total: int, world: int) -> None:
    sizes = [shard_size(total, r, world) for r in range(world)]
    assert sum(sizes) == total and max(sizes) - min(sizes) <= 1
    assert len({rank_seed(3, r) for r in range(world)}) == world and rank_seed(3, 0) == 3
    with pytest.raises(ValueError, match="invalid sharding"):
        shard_size(total, world, world)


def test_merge_mean_se_equals_the_pooled_probes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=37)
    parts = [x[:1], x[1:10], x[10:11], x[11:]]  # includes one-probe parts (no spread of their own)

    def stat(p: np.ndarray):
        se = p.std(ddof=1) / math.sqrt(len(p)) if len(p) > 1 else None
        return float(p.mean()), se, len(p)

    mean, se, k = merge_mean_se([stat(p) for p in parts])
    assert k == 37
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(37), rel=1e-10)
    assert merge_mean_se([(2.0, None, 1)]) == (2.0, None, 1)
    with pytest.raises(ValueError, match="no probes"):
        merge_mean_se([(1.0, 0.1, 0)])


def test_reduce_mean_se_is_the_identity_on_one_process() -> None:
    stats = {"a": (1.0, 0.1, 4), "b": (np.ones(3), np.zeros(3), 4)}
    assert reduce_mean_se(stats, None) is not stats
    assert reduce_mean_se(stats, None)["a"] == (1.0, 0.1, 4)


def _close(a: float, b: float, se_a: float, se_b: float, k: float = 4.0) -> bool:
    return abs(a - b) <= k * math.hypot(se_a, se_b) + 1e-12 * max(abs(a), abs(b))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("estimate_dp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.mnist1d_train()
    np.savez(tmp_path / "data.npz", x=data[0], y=data[1])
    launch, env = cpu_ddp_launch(2)
    cmd = [
        *launch,
        str(SCRIPT),
        str(tmp_path),
        str(tmp_path / "data.npz"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        one = module.run(None, data)  # the one-process reference runs here while the launch starts up
        out, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # reduced results are the same on every rank
    for key in ("C_arch", "T_opt", "d_eff", "groups", "hessian", "ntk"):
        assert r0[key] == r1[key], key
    two = r0
    cfg = module.CFG
    assert two["settings"]["probe_samples_shared"] and not one["settings"]["probe_samples_shared"]
    # the Jacobian pass was shared out by samples and all-reduced: the same Gram, diagonals and eigenvalues
    for key in ("C_arch", "d_eff"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert two["ntk"]["trace"] == pytest.approx(one["ntk"]["trace"], rel=1e-5)
    assert two["hessian"]["gauss_newton_trace"] == pytest.approx(
        one["hessian"]["gauss_newton_trace"], rel=1e-5
    )
    top1, top2 = one["hessian"]["top_eigenvalue"], two["hessian"]["top_eigenvalue"]
    assert top2["gauss_newton"]["eigenvalue"] == pytest.approx(top1["gauss_newton"]["eigenvalue"], rel=1e-4)
    assert two["hessian_top_eigenvalue"] == pytest.approx(one["hessian_top_eigenvalue"], rel=5e-3)
    for g, row in one["groups"].items():  # exact per-group NTK traces
        assert two["groups"][g]["ntk_trace"] == pytest.approx(row["ntk_trace"], rel=1e-5), g
    # the Hessian probes were shared out, not repeated: the totals match the config
    assert two["hessian"]["num_probes"] == one["hessian"]["num_probes"] == cfg.hessian_probes
    h1, h2 = one["hessian"], two["hessian"]
    assert _close(
        h1["normalized_trace"], h2["normalized_trace"], h1["normalized_trace_se"], h2["normalized_trace_se"]
    )
    assert _close(h1["trace"], h2["trace"], h1["trace_se"], h2["trace_se"])
    # and rank 1 did contribute: its probes differ from the one-process run's second half
    assert two["T_opt"] != one["T_opt"]

    # Monte-Carlo NTK traces and plain Hutchinson Hessian: probes shared out, merged within sampling error
    one_h, two_h = one["hutchinson"], r0["hutchinson"]
    for key in ("C_arch", "T_opt", "groups", "hessian", "ntk"):
        assert r0["hutchinson"][key] == r1["hutchinson"][key], key
    assert two_h["ntk"]["hutchinson_probes"] == cfg.trace_probes
    for g, row in one_h["groups"].items():
        other = two_h["groups"][g]
        assert _close(row["ntk_trace"], other["ntk_trace"], row["ntk_trace_se"], other["ntk_trace_se"]), g
        assert 0.4 < other["ntk_trace_se"] / row["ntk_trace_se"] < 2.5, g
        # and the exact traces lie within the merged Hutchinson error
        assert _close(two["groups"][g]["ntk_trace"], other["ntk_trace"], 0.0, other["ntk_trace_se"]), g
    h1, h2 = one_h["hessian"], two_h["hessian"]
    assert _close(h1["trace"], h2["trace"], h1["trace_se"], h2["trace_se"])
    n2 = two_h["ntk"]
    assert _close(n2["trace"], n2["hutchinson_trace"], 0.0, n2["hutchinson_trace_se"])

    # masked predictions: the same on every rank, and the one-process numbers (samples and probes shared)
    assert r0["masked"] == r1["masked"]
    m1, m2 = one["masked"], two["masked"]
    assert m2["default"]["settings"]["probe_samples_shared"]
    for key in ("C_arch", "T_opt", "ntk_trace", "train_loss", "train_accuracy"):
        assert m2["default"][key] == pytest.approx(m1["default"][key], rel=1e-5), key
    assert m2["default"]["removed_units"] == 4 and m2["default"]["C_arch"] != two["C_arch"]
    f1, f2 = m1["full"], m2["full"]
    assert _close(f1["T_opt"], f2["T_opt"], f1["T_opt_se"], f2["T_opt_se"])
    assert f2["hessian_top_eigenvalue"] == pytest.approx(f1["hessian_top_eigenvalue"], rel=5e-3)

    # a Jacobian too big to gather: the Gram is built whole on every rank, the eigenvalue products shared
    one_r, two_r = one["replicated"], r0["replicated"]
    assert not two_r["settings"]["probe_samples_shared"]
    for key in ("C_arch", "T_opt", "groups", "hessian", "ntk"):
        assert r0["replicated"][key] == r1["replicated"][key], key
    assert two_r["C_arch"] == pytest.approx(one_r["C_arch"], rel=1e-6)
    assert two_r["C_arch"] == pytest.approx(two["C_arch"], rel=1e-5)  # the same kernel either way
    assert two_r["hessian"]["top_eigenvalue"]["start"] == "random"
    assert two_r["hessian_top_eigenvalue"] == pytest.approx(one_r["hessian_top_eigenvalue"], rel=5e-3)
