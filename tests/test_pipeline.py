"""The whole pipeline end to end on real MNIST-1D, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# The quickstart, shrunk to seconds: narrower CNN, fewer samples and epochs, two levels.
SMALL = [
    "model.kwargs.width=16",
    "data.max_train_samples=1200",
    "train.epochs=3",
    "finetune.epochs=1",
    "prune.levels=[0.5, 0.7]",
    "evaluate.latency_repeats=5",
    # the quickstart plans with the theory planner in steps; these tests check the run machinery on the
    # fast uniform one-shot path (tests/test_schedule.py runs the theory planner with a schedule)
    "prune.planner=uniform",
    "prune.planner_options={}",
    "prune.schedule.name=one_shot",
    # the theory estimates, cheaply: they must be deterministic too, so resume reproduces them
    "estimate.enabled=true",
    "estimate.probe_samples=64",
    "estimate.trace_probes=8",
    "estimate.hessian_probes=8",
    "estimate.power_iters=5",
    "estimate.id_samples=500",
]


def run_cli(out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "prunekit", "run", "configs/quickstart.yaml", "--output", str(out)]
    for s in SMALL + list(extra):
        args += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def prunekit_cmd(*args: str, sets: list[str] = ()) -> subprocess.CompletedProcess:
    """Run one prunekit command to completion (``--set`` for each of ``sets``)."""
    argv = [sys.executable, "-m", "prunekit", *args]
    for s in sets:
        argv += ["--set", s]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=400)


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def stable(report: dict) -> dict:
    """A report without the fields that are wall-clock measurements."""
    drop = set(report["volatile_fields"])
    return {
        **{k: v for k, v in report.items() if k not in ("dense", "levels")},
        "dense": {k: v for k, v in report["dense"].items() if k not in drop},
        "levels": [{k: v for k, v in lv.items() if k not in drop} for lv in report["levels"]],
    }


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    log = finish(run_cli(out))
    assert "done in" in log.strip().splitlines()[-1]  # the one-line summary ends the run
    return out


def test_quickstart_writes_the_output_folder(reference_run: Path) -> None:
    import prunekit

    names = {p.name for p in reference_run.iterdir()}
    assert {
        "report.json",
        "report.md",
        "accuracy_vs_params.png",
        "run.log",
        "state.json",
        "dense",
        "level-50",
        "level-70",
    } <= names
    report = json.loads((reference_run / "report.json").read_text())
    for key in ("task", "model", "planner", "seed", "dense", "levels"):
        assert key in report
    assert report["planner"] == "uniform" and report["seed"] == 0
    assert set(report["dense"]) >= {"params", "macs", "accuracy", "latency_ms"}
    assert report["dense"]["accuracy"] > 0.3  # well above 10-class chance after 3 short epochs
    for lv in report["levels"]:
        assert set(lv) >= {
            "target",
            "params",
            "macs",
            "accuracy",
            "accuracy_before_finetune",
            "params_saved",
            "latency_ms",
            "checkpoint",
        }
        assert abs(lv["params_saved"] - lv["target"]) <= 0.01  # the ratio means what it says
        assert lv["params"] < report["dense"]["params"]
        model, meta = prunekit.load(reference_run / lv["checkpoint"])
        assert sum(p.numel() for p in model.parameters()) == lv["params"]
        # the gap is predicted before fine-tuning and measured after it
        assert lv["predicted_gap"] == lv["estimate"]["bound"] and lv["predicted_gap"] > 0
        assert lv["gap"] == pytest.approx(lv["train_accuracy"] - lv["accuracy"])
        assert lv["estimate"]["n"] == 1200
    md = (reference_run / "report.md").read_text()
    assert "predicted gap" in md
    assert "level-50" in md and "level-70" in md
    assert (reference_run / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_of_finished_folder_recomputes_nothing(reference_run: Path) -> None:
    before = (reference_run / "level-50" / "model.safetensors").stat().st_mtime_ns
    log = finish(run_cli(reference_run))
    assert "finished earlier" in log
    assert (reference_run / "level-50" / "model.safetensors").stat().st_mtime_ns == before


def _done(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text()).get("done", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# Kill points: in the middle of dense training, and in the middle of the pruned levels.
KILL_POINTS = {
    "during-dense": lambda out: (out / "state.json").is_file() and (time.sleep(1.5) or True),
    "during-levels": lambda out: "dense" in _done(out),
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_resume_after_sigkill_gives_the_same_report(
    reference_run: Path, tmp_path: Path, kill_point: str
) -> None:
    out = tmp_path / "killed"
    proc = run_cli(out)
    deadline = time.time() + 300
    while not KILL_POINTS[kill_point](out):
        if time.time() > deadline or proc.poll() is not None:
            pytest.fail(f"never reached the kill point {kill_point}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists()
    finished = _done(out)
    mtimes = {k: (out / k / "model.safetensors").stat().st_mtime_ns for k in finished}

    log = finish(run_cli(out))
    for k in finished:  # nothing finished is recomputed
        assert f"{k}: finished earlier" in log
        assert (out / k / "model.safetensors").stat().st_mtime_ns == mtimes[k]
    resumed = json.loads((out / "report.json").read_text())
    reference = json.loads((reference_run / "report.json").read_text())
    assert stable(resumed) == stable(reference)


def test_folder_of_another_config_is_refused(reference_run: Path) -> None:
    proc = run_cli(reference_run, "seed=1")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "different config" in out and "--overwrite" in out
    assert json.loads((reference_run / "report.json").read_text())["seed"] == 0


def test_info_and_evaluate_commands_on_a_checkpoint(reference_run: Path) -> None:
    info = prunekit_cmd("info", str(reference_run / "level-70"))
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert meta["planner"] == "uniform" and meta["weights_ok"] is True
    assert meta["base"]["name"] == "cnn1d"
    assert meta["pruned_groups"]  # it says which groups lost units
    ev = prunekit_cmd("evaluate", str(reference_run / "level-70"))
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    report = json.loads((reference_run / "report.json").read_text())
    level = next(lv for lv in report["levels"] if lv["checkpoint"] == "level-70")
    assert result["accuracy"] == level["accuracy"] and result["params"] == level["params"]


def test_plan_command_shows_plans_and_changes_nothing(reference_run: Path) -> None:
    before = sorted(p.name for p in reference_run.iterdir())
    proc = prunekit_cmd("plan", "configs/quickstart.yaml", "--output", str(reference_run), sets=SMALL)
    assert proc.returncode == 0, proc.stderr
    plans = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [p["level"] for p in plans] == [0.5, 0.7]
    for p in plans:
        assert abs(p["achieved"]["params_saved"] - p["level"]) <= 0.01
    assert sorted(p.name for p in reference_run.iterdir()) == before


def test_estimate_command_on_a_checkpoint_folder(reference_run: Path) -> None:
    # the cheap estimator settings only
    proc = prunekit_cmd("estimate", str(reference_run / "level-50"), sets=SMALL[-5:])
    assert proc.returncode == 0, proc.stderr
    est = json.loads((reference_run / "estimate-level-50.json").read_text())
    report = json.loads((reference_run / "report.json").read_text())
    level = report["levels"][0]
    assert "level-50" in est["model_source"] and est["n"] == 1200
    # the fine-tuned model is estimated (not the pruned one before fine-tuning that the report predicted from)
    assert est["bound"] > 0 and est["C_arch"] != level["estimate"]["C_arch"]
    assert est["top_groups_ntk"]  # per-group contributions of the pruned model


def test_pruning_a_pruned_checkpoint_composes_the_plans(reference_run: Path, tmp_path: Path) -> None:
    import prunekit

    start = reference_run / "level-50"
    out = tmp_path / "again"
    proc = run_cli(
        out, f"model.checkpoint={start}", "train.epochs=0", "prune.levels=[0.5]", "estimate.enabled=false"
    )
    finish(proc)
    report = json.loads((out / "report.json").read_text())
    first = json.loads((reference_run / "report.json").read_text())["levels"][0]
    assert report["dense"]["params"] == first["params"]  # the run's "dense" model is the pruned checkpoint
    (level,) = report["levels"]
    model, meta = prunekit.load(out / "level-50")  # rebuilt from the original base and one composed plan
    assert sum(p.numel() for p in model.parameters()) == level["params"]
    assert meta["base"]["name"] == "cnn1d" and meta["base"]["kwargs"] == {"width": 16}
    dense_again, _ = prunekit.load(out / "dense")
    assert sum(p.numel() for p in dense_again.parameters()) == first["params"]


# ------------------------------------------------------------------------------------------ schedules

# The planner and schedule are set explicitly: these tests are about the schedule, whatever the quickstart uses.
UNIFORM = ["prune.planner=uniform", "prune.planner_options={}", "prune.importance=l2"]
STEP_KEYS = {
    "step",
    "target_saved",
    "saved",
    "params",
    "macs",
    "predicted_gap_planned",
    "predicted_gap_planned_calibrated",
    "predicted_gap_after_finetune",
    "predicted_gap_after_finetune_calibrated",
    "train_steps",
    "val_accuracy",
    "plan",
}


def _one_shot_budget() -> int:
    """Optimizer steps of one one-shot fine-tune of the SMALL quickstart (1200 training samples)."""
    import math

    from prunekit.config import load_config

    cfg = load_config(ROOT / "configs/quickstart.yaml", SMALL).finetune
    return math.ceil(cfg.epochs * math.ceil(1200 / cfg.batch_size) / cfg.grad_accum_steps)


def test_scheduled_run_reports_each_step_within_the_one_shot_budget(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scheduled"
    sched = ["prune.schedule.name=constant_gap", "prune.schedule.steps=3", "prune.schedule.tolerance=0.5"]
    finish(run_cli(out, *UNIFORM, *sched, "prune.schedule.chain_levels=false"))
    report = json.loads((out / "report.json").read_text())
    reference = json.loads((reference_run / "report.json").read_text())
    assert report["schedule"]["name"] == "constant_gap"
    budget = _one_shot_budget()
    one_shot = json.loads((reference_run / "state.json").read_text())["done"]
    for lv, ref in zip(report["levels"], reference["levels"], strict=True):
        assert lv["schedule"] == "constant_gap" and lv["schedule_status"] in ("reached", "held")
        assert lv["steps"] and all(set(s) >= STEP_KEYS for s in lv["steps"])
        # one fixed fine-tuning budget: the one-shot level's, shared out over the steps
        assert lv["total_train_steps"] == budget == sum(s["train_steps"] for s in lv["steps"])
        assert ref["total_train_steps"] == one_shot[ref["checkpoint"]]["history"]["steps"] == budget
        limit = lv["schedule_reference_gap"] * 1.5
        for s in lv["steps"]:  # every step's plan holds the predicted gap within the tolerance
            assert 0 < s["predicted_gap_planned"] <= limit + 1e-12
            assert s["predicted_gap_after_finetune"] > 0
        last = lv["steps"][-1]
        assert last["params"] == lv["params"] and last["macs"] == lv["macs"]
        if lv["schedule_status"] == "reached":
            assert abs(lv["params_saved"] - lv["target"]) <= 0.01
        else:
            assert "force: true" in lv["schedule_note"]
        assert lv["gap"] == pytest.approx(lv["train_accuracy"] - lv["accuracy"])
    md = (out / "report.md").read_text()
    assert "| checkpoint | params saved | predicted gap (stated) | predicted gap (calibrated) |" in md
    assert "measured gap |" in md and "## Schedule: constant_gap" in md
    assert "| level-70 | 0 |" in md  # the steps table
    assert (out / "gap_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_chained_levels_build_on_each_other(tmp_path: Path) -> None:
    import math

    import prunekit

    out = tmp_path / "chained"
    sched = ["prune.schedule.name=linear", "prune.schedule.steps=2", "prune.schedule.chain_levels=true"]
    # a global ranking (fine steps: it lands within 1 % on the 50 % model's few channels), and a floor on
    # the first conv, which that ranking thins most: 70 % of the dense width, at every step of every level
    planner = ["prune.planner=global_magnitude", "prune.planner_options={}", "prune.importance=null"]
    floor = "prune.layers=[{pattern: features.0, min_keep: 0.7}]"
    finish(run_cli(out, *planner, *sched, floor, "estimate.enabled=false"))
    report = json.loads((out / "report.json").read_text())
    first, second = report["levels"]
    assert first["starts_from"] == "dense" and second["starts_from"] == "level-50"
    # the 70 % level's linear steps run from where the 50 % model stands, not from the dense model
    assert second["steps"][0]["target_saved"] == pytest.approx(
        first["params_saved"] + (0.7 - first["params_saved"]) / 2
    )
    assert second["steps"][0]["saved"] > first["params_saved"] + 0.05
    assert abs(second["params_saved"] - 0.7) <= 0.01
    assert first["total_train_steps"] == second["total_train_steps"] == _one_shot_budget()
    # one plan relative to the base: the 70 % model keeps a subset of the 50 % model's units
    m50, meta50 = prunekit.load(out / "level-50")
    m70, meta70 = prunekit.load(out / "level-70")
    keep50, keep70 = meta50["plan"]["keep"], meta70["plan"]["keep"]
    assert meta70["plan"]["num_units"] == meta50["plan"]["num_units"]  # both sized on the base model
    assert all(set(keep70[g]) <= set(keep50[g]) for g in keep50)
    assert any(len(keep70[g]) < len(keep50[g]) for g in keep50)
    # the floor did not compound over the steps and levels (0.7 of 0.7 of the dense width ...)
    first_conv = next(g for g in keep70 if g.startswith("features.0:"))
    dense_width = meta70["plan"]["num_units"][first_conv]
    for keep in (keep50, keep70):
        assert len(keep[first_conv]) >= math.ceil(0.7 * dense_width)
    assert sum(p.numel() for p in m70.parameters()) == second["params"]
    assert "level-70: continues from level-50" in (out / "run.log").read_text()
