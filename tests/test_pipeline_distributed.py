"""`accelerate launch -m prunekit run` over two real gloo DDP ranks on CPU : one- and two-process runs compared."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from prunekit.testing import cpu_ddp_launch

ROOT = Path(__file__).parent.parent

# A curve planner whose plan comes from Estimator predictions (the theory's risk), kept cheap.
THEORY = [
    "model.kwargs.width=16",
    "data.max_train_samples=1200",
    "finetune.epochs=1",
    "prune.levels=[0.5, 0.7]",
    "evaluate.latency_repeats=5",
    "prune.planner=theory",
    "prune.importance=l2",
    "prune.planner_options={quantity: risk, probe_samples: 64, allocation: curves, fractions: [0.6, 0.3]}",
    "prune.schedule.name=one_shot",
    "prune.schedule.chain_levels=true",  # the 70 % level continues from the 50 % checkpoint on every rank
    "estimate.enabled=false",
]


def _run(out: Path, processes: int, *extra: str) -> dict:
    import os
    import sys

    if processes == 1:
        args, env = [sys.executable], dict(os.environ, OMP_NUM_THREADS="1")
    else:
        args, env = cpu_ddp_launch(processes)
    args = args + ["-m", "prunekit", "run", "configs/quickstart.yaml", "--output", str(out)]
    for s in THEORY + list(extra):
        args += ["--set", s]
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_make_the_one_process_plan_and_accuracy(tmp_path: Path) -> None:
    one = _run(tmp_path / "one", 1, "train.epochs=3")
    # the same dense weights on two ranks: the plan depends on nothing else
    two = _run(tmp_path / "two", 2, "train.epochs=0", f"model.checkpoint={tmp_path / 'one' / 'dense'}")
    log = (tmp_path / "two" / "run.log").read_text()
    assert "2 process(es)" in log
    assert log.count("plan made on rank 0 and broadcast to 2 processes") == 2  # one per level
    plans = [
        json.loads((tmp_path / k / "level-50" / "prunekit.json").read_text())["plan"] for k in ("one", "two")
    ]
    assert plans[0]["keep"] == plans[1]["keep"]  # the same units of every group
    assert plans[0]["planner"] == "theory" and plans[0]["num_units"] == plans[1]["num_units"]
    a, b = one["levels"][0], two["levels"][0]
    assert a["params"] == b["params"] and a["accuracy_before_finetune"] == b["accuracy_before_finetune"]
    # fine-tuning under DDP (the global batch split over the ranks) ends close to the one-process run
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.03
    # the chained level is planned on each run's own fine-tuned 50 % model: same size, close accuracy
    a, b = one["levels"][1], two["levels"][1]
    assert a["starts_from"] == b["starts_from"] == "level-50"
    assert abs(a["params_saved"] - b["params_saved"]) <= 0.01 and abs(a["accuracy"] - b["accuracy"]) <= 0.05
    # what the ranks saved is one loadable checkpoint of the reported size (training under DDP itself is
    # tested in tests/test_distributed.py)
    import prunekit

    model, _ = prunekit.load(tmp_path / "two" / "level-50")
    assert sum(p.numel() for p in model.parameters()) == two["levels"][0]["params"]
