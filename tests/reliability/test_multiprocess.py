"""One config, one result, on 1 and on 2 processes: ``batch_size`` is the global batch.

When ``batch_size`` was per process, the same config trained with a doubled batch (half the steps) on
two processes and ended 10–14 accuracy points apart after 3 epochs. Real gloo DDP ranks on CPU.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from reliability_helpers import ROOT, TINY, prunekit, report_of

from prunekit.testing import cpu_ddp_launch

# 384 training signals = 6 global batches of 64: both launches see exactly the same batches.
SAME = [*TINY, "data.max_train_samples=384", "train.epochs=3"]


def _launch2(out: Path, sets: list[str]) -> subprocess.CompletedProcess:
    launch, env = cpu_ddp_launch(2)
    args = launch + ["-m", "prunekit", "run", "configs/quickstart.yaml", "--output", str(out)]
    for s in sets:
        args += ["--set", s]
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _history(out: Path, key: str) -> dict:
    return json.loads((out / "state.json").read_text())["done"][key]["history"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_one_and_two_processes_train_alike(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    proc = prunekit("run", "configs/quickstart.yaml", "--output", str(one), sets=SAME)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _launch2(two, SAME)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in (two / "run.log").read_text()
    for key in ("dense", "level-50"):
        h1, h2 = _history(one, key), _history(two, key)
        assert h2["num_processes"] == 2 and h1["num_processes"] == 1
        assert h1["global_batch_size"] == h2["global_batch_size"] == 64
        assert h1["steps"] == h2["steps"]
        # the same batches in the same order: only float summation order differs
        for a, b in zip(h1["train_loss"], h2["train_loss"], strict=True):
            assert abs(a - b) <= 0.02 * abs(a), (h1["train_loss"], h2["train_loss"])
    r1, r2 = report_of(one), report_of(two)
    assert abs(r1["dense"]["accuracy"] - r2["dense"]["accuracy"]) <= 0.03
    assert r1["levels"][0]["params"] == r2["levels"][0]["params"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_batch_that_does_not_divide_over_processes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "odd"
    proc = _launch2(out, [*TINY, "train.batch_size=63"])
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("prunekit: error: ")]
    assert lines and "train.batch_size" in lines[0] and "2 processes" in lines[0], proc.stderr[-3000:]
    assert not (out / "state.json").exists()
