"""`accelerate launch -m prunekit run` over two real gloo DDP ranks on CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from prunekit.testing import cpu_ddp_launch

ROOT = Path(__file__).parent.parent
SMALL = [
    "model.kwargs.width=16",
    "data.max_train_samples=1200",
    "train.epochs=3",
    "finetune.epochs=1",
    "prune.levels=[0.5]",
    "evaluate.latency_repeats=5",
]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_pipeline_run(tmp_path: Path) -> None:
    out = tmp_path / "dp"
    launch, env = cpu_ddp_launch(2)
    args = launch + ["-m", "prunekit", "run", "configs/quickstart.yaml", "--output", str(out)]
    for s in SMALL:
        args += ["--set", s]
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in (out / "run.log").read_text()
    report = json.loads((out / "report.json").read_text())
    (level,) = report["levels"]
    assert abs(level["params_saved"] - 0.5) <= 0.01
    assert report["dense"]["accuracy"] > 0.2  # learned something with the doubled global batch
    import prunekit

    model, _ = prunekit.load(out / "level-50")
    assert sum(p.numel() for p in model.parameters()) == level["params"]
