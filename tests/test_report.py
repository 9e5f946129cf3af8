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


def _scheduled_level(target: float, params: int, start: str) -> dict:
    step = {
        "step": 0,
        "target_saved": target,
        "saved": target,
        "params": params,
        "macs": 10 * params,
        "predicted_gap_planned": 0.021,
        "predicted_gap_planned_calibrated": 0.011,
        "predicted_gap_after_finetune": 0.019,
        "predicted_gap_after_finetune_calibrated": None,
        "train_steps": 7,
        "val_accuracy": 0.8125,
        "finetune_seconds": 1.5,
        "keep": {"conv1": 8},
        "plan": {
            "planner": "theory",
            "target": {},
            "predicted_gap": 0.021,
            "pruned_groups": {"conv1": [8, 16]},
        },
    }
    return {
        "target": target,
        "params": params,
        "macs": 10 * params,
        "accuracy": 0.8,
        "accuracy_before_finetune": 0.5,
        "params_saved": target,
        "macs_saved": target,
        "latency_ms": 0.5,
        "speedup": None,
        "speedup_per_mac_reduction": None,
        "predicted_gap": 0.0234,
        "predicted_gap_calibrated": 0.0117,
        "train_accuracy": 0.83,
        "gap": 0.03,
        "checkpoint": f"level-{round(100 * target)}",
        "schedule": "constant_gap",
        "schedule_status": "held",
        "schedule_note": "stopped short",
        "schedule_reference_gap": 0.015,
        "starts_from": start,
        "total_train_steps": 14,
        "steps": [step, step | {"step": 1, "saved": target + 0.001}],
    }


def test_report_carries_the_schedule_and_the_predicted_against_measured_gap(tmp_path: Path) -> None:
    dense = {"params": 1000, "macs": 10_000, "accuracy": 0.9, "latency_ms": 1.0, "predicted_gap": 0.018}
    dense |= {"train_accuracy": 0.95, "gap": 0.05}
    levels = [_scheduled_level(0.5, 500, "dense"), _scheduled_level(0.7, 300, "level-50")]
    cfg = RunConfig.model_validate(
        {"name": "s", "prune": {"schedule": {"name": "constant_gap", "chain_levels": True}}}
    )
    report = build_report(cfg, dense, levels)
    write_report(tmp_path, report)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["schedule"]["name"] == "constant_gap" and saved["schedule"]["chain_levels"] is True
    lv = saved["levels"][1]
    assert lv["schedule_status"] == "held" and lv["schedule_note"] == "stopped short"
    assert lv["starts_from"] == "level-50" and lv["total_train_steps"] == 14
    assert [s["step"] for s in lv["steps"]] == [0, 1] and lv["steps"][0]["params"] == 300
    assert "finetune_seconds" not in lv["steps"][0]  # wall time stays in state.json
    md = (tmp_path / "report.md").read_text()
    header = next(line for line in md.splitlines() if "predicted gap (stated)" in line)
    assert "measured gap" in header and "predicted gap (calibrated)" in header
    row = next(line for line in md.splitlines() if line.startswith("| level-70 | 70.0 % |"))
    assert "0.0234" in row and "0.0117" in row and "+0.0300" in row and "0.8300" in row
    dense_row = next(line for line in md.splitlines() if line.startswith("| dense | 0.0 % |"))
    assert "0.0180" in dense_row and "+0.0500" in dense_row
    # the schedule: one row per level and one per step
    assert "| level-70 | level-50 | held | 0.0150 | 14 | stopped short |" in md
    step_rows = [line for line in md.splitlines() if line.startswith("| level-70 | 1 |")]
    assert len(step_rows) == 1 and "0.0210 / 0.0110" in step_rows[0] and "0.8125" in step_rows[0]
    assert "gap_vs_params.png" in md
    assert (tmp_path / "gap_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_report_without_gaps_has_no_gap_table_or_plot(tmp_path: Path) -> None:
    dense = {"params": 100, "macs": 1000, "accuracy": 0.9, "latency_ms": 1.0}
    level = {k: v for k, v in _scheduled_level(0.5, 50, "dense").items() if "gap" not in k}
    level |= {"schedule": "one_shot", "steps": None}
    report = build_report(RunConfig(name="t"), dense, [level])
    write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "predicted gap" not in md and "## Schedule" not in md
    assert not (tmp_path / "gap_vs_params.png").exists()
