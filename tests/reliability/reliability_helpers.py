"""Helpers for the reliability suite: real ``prunekit`` processes on a tiny real MNIST-1D run.

Every case here is something a careless user or an attacker can do with the command line, a config
or an output folder; the suite checks that each ends in one line and exit code 2 (or works), never a
traceback, a hang, a mixed folder or a deleted file. ``experiments/reliability_report.py`` runs it
and writes results/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
# A run of a few seconds: a narrow CNN on 400 MNIST-1D signals, one or two levels, no estimates.
TINY = [
    "model.kwargs.width=8",
    "data.max_train_samples=400",
    "data.max_eval_samples=200",
    "train.epochs=2",
    "finetune.epochs=1",
    "prune.levels=[0.5]",
    "evaluate.latency_repeats=3",
    "evaluate.latency_warmup=1",
    # the run machinery on the fast path (the quickstart itself plans with theory in steps, estimates on)
    "prune.planner=uniform",
    "prune.planner_options={}",
    "prune.schedule.name=one_shot",
    "estimate.enabled=false",
]


def env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def argv(*args: str, sets: list[str] | tuple[str, ...] = ()) -> list[str]:
    out = [sys.executable, "-m", "prunekit", *args]
    for s in sets:
        out += ["--set", s]
    return out


def prunekit(*args: str, sets=(), timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run one ``prunekit`` command to completion in a fresh process."""
    kw.setdefault("env", env())
    return subprocess.run(
        argv(*args, sets=sets), cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


def start(*args: str, sets=()) -> subprocess.Popen:
    """Start one ``prunekit`` command in the background (output merged into stdout)."""
    return subprocess.Popen(
        argv(*args, sets=sets),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def error_line(stderr: str) -> str:
    """The one ``prunekit: error:`` line of a failed command; fails on a traceback or a longer message."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines, "no error message on stderr"
    assert lines[-1].startswith("prunekit: error: "), stderr[-3000:]
    assert len(lines[-1]) < 600, lines[-1]
    return lines[-1]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    line = error_line(proc.stderr)
    for needle in needles:
        assert needle in line, line
    return line


def cli_error(capsys: pytest.CaptureFixture, args: list[str], *needles: str) -> str:
    """``prunekit.cli.main(args)`` in this process: exit code 2 and one error line containing ``needles``."""
    from prunekit.cli import main

    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = error_line(err)
    for needle in needles:
        assert needle in line, line
    return line


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → sha256): equal digests mean nothing was touched.
    The lock file is left out: each run that takes the lock writes its pid there."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".prunekit.lock"
    }


def stable(report: dict) -> dict:
    """A report without its wall-clock fields."""
    drop = set(report["volatile_fields"])
    return {
        **{k: v for k, v in report.items() if k not in ("dense", "levels")},
        "dense": {k: v for k, v in report["dense"].items() if k not in drop},
        "levels": [{k: v for k, v in lv.items() if k not in drop} for lv in report["levels"]],
    }


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())
