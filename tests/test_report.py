"""report.md / report.json / the plot, from a report dict."""

from __future__ import annotations

import json
from pathlib import Path

from prunekit.config import RunConfig
from prunekit.report import build_report, write_report


def test_report_files(tmp_path: Path) -> None:
    dense = {"params": 100_000, "macs": 2_000_000, "accuracy": 0.9, "latency_ms": 1.0}
    level = {
        "target": 0.5,
        "params": 50_000,
        "macs": 1_000_000,
        "accuracy": 0.85,
        "accuracy_before_finetune": 0.4,
        "params_saved": 0.5,
        "macs_saved": 0.5,
        "latency_ms": 0.8,
        "speedup": 1.25,
        "speedup_per_mac_reduction": 0.625,
        "predicted_gap": None,
        "checkpoint": "level-50",
        "history": {"train_loss": [1.0]},
    }
    report = build_report(RunConfig(name="t"), dense, [level])
    assert "history" not in report["levels"][0]  # training curves stay in state.json
    write_report(tmp_path, report)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| level-50"))
    assert "50.0 %" in row and "0.8500" in row and "0.4000" in row and "1.25×" in row and "0.62" in row
    assert (tmp_path / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
