"""The command line: bad input ends in one line and exit code 2, and nothing already written is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
QUICK = ROOT / "configs" / "quickstart.yaml"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "prunekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("prunekit: error:")]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("command", ["run", "plan", "estimate", "evaluate", "info"])
def test_every_command_has_help(command: str) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0
    assert "usage: prunekit " + command in proc.stdout


def test_typo_in_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text(QUICK.read_text().replace("  epochs: 10", "  epoch: 10"))
    assert_one_line_error(
        cli("run", str(cfg), "--output", str(tmp_path / "out")), r"unknown key 'finetune\.epoch'"
    )
    assert not (tmp_path / "out").exists()


def test_ratio_out_of_range_via_override(tmp_path: Path) -> None:
    proc = cli("run", str(QUICK), "--set", "prune.levels=[0.5, 1.2]", "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, r"prune\.levels.*outside \[0, 1\)")


def test_missing_config_file() -> None:
    assert_one_line_error(cli("run", "configs/does-not-exist.yaml"), "does not exist")


def test_unknown_planner_leaves_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = cli("run", str(QUICK), "--set", "prune.planner=magic", "--output", str(out))
    assert_one_line_error(proc, r"unknown planner 'magic'.*uniform")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_missing_model_path(tmp_path: Path) -> None:
    proc = cli(
        "run",
        str(QUICK),
        "--set",
        "model.name=hf",
        "--set",
        f"model.path={tmp_path / 'nope'}",
        "--output",
        str(tmp_path / "o"),
    )
    assert_one_line_error(proc, "nope")
    assert not (tmp_path / "o").exists()


def test_unknown_dataset(tmp_path: Path) -> None:
    proc = cli("run", str(QUICK), "--set", "data.name=cifar11", "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, "cifar11")


def test_info_on_a_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    assert_one_line_error(cli("info", str(tmp_path)), "not a prunekit checkpoint")


def test_overwrite_with_bad_model_leaves_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    proc = cli("run", str(QUICK), "--overwrite", "--set", "model.kwargs.depth=3", "--output", str(out))
    # not a run folder (no state.json): refused even with --overwrite, whatever else is wrong
    assert_one_line_error(proc, "not a prunekit run folder")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    ("sets", "pattern"),
    [
        (["prune.importance=magic"], "unknown importance criterion 'magic'"),
        (["prune.min_keep_fraction=0.9"], "cannot be reached"),  # layers at their floors save < 50 %
    ],
)
def test_plan_problems_fail_before_any_training(tmp_path: Path, sets: list[str], pattern: str) -> None:
    args = ["run", str(QUICK), "--output", str(tmp_path / "o")]
    for s in sets:
        args += ["--set", s]
    assert_one_line_error(cli(*args), pattern)
    assert not (tmp_path / "o").exists()


def test_plan_prints_and_writes_the_plan_curves_and_schedule(tmp_path: Path) -> None:
    js, png = tmp_path / "plan.json", tmp_path / "plan.png"
    sets = [
        "train.epochs=0",
        "prune.levels=[0.5]",
        "prune.planner=loss_sensitivity",
        "prune.planner_options={fractions: [0.5], allocation: curves}",
        "prune.schedule.name=linear",
        "prune.schedule.steps=4",
    ]
    args = ["plan", str(QUICK), "--json", str(js), "--plot", str(png), "--output", str(tmp_path / "o")]
    proc = cli(*args, *[a for s in sets for a in ("--set", s)])
    assert proc.returncode == 0, proc.stderr
    assert "  keep: features.0:out " in proc.stdout and "planning cost: " in proc.stdout
    out = json.loads(js.read_text())
    (level,) = out["levels"]
    assert set(level["keep_fraction"]) == set(level["curves"]) == set(level["kept_units"])
    assert level["achieved"]["dense_params"] > level["achieved"]["params"] and level["seconds"] > 0
    assert [s["target_saved"] for s in out["schedule"]["levels"]["0.5"]] == [0.125, 0.25, 0.375, 0.5]
    assert out["planning_seconds"] == pytest.approx(level["seconds"], abs=1e-3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "o").exists()  # nothing pruned, trained or saved


@pytest.mark.parametrize(
    ("flag", "name", "pattern"),
    [
        ("--plot", "plan.txt", r"--plot .*plan\.txt: give a \.png, \.pdf, \.svg file"),
        ("--json", "no/plan.json", "does not exist"),
    ],
)
def test_plan_output_problems_fail_before_any_work(
    tmp_path: Path, flag: str, name: str, pattern: str
) -> None:
    proc = cli("plan", str(QUICK), flag, str(tmp_path / name), "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, pattern)
    assert proc.stdout == "" and not (tmp_path / "o").exists()
