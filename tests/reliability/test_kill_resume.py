"""``kill -9`` of a real run at several moments; the same command then finishes with the same report.

tests/test_pipeline.py kills the quickstart (with estimates) during dense training and during the
levels; here a two-level tiny run is killed at more moments, and at the state a kill in the middle of
a checkpoint write leaves (the hidden temporary folder of :func:`prunekit.atomic.write_folder`).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from reliability_helpers import TINY, prunekit, report_of, stable, start

TWO_LEVELS = [*TINY, "prune.levels=[0.5, 0.7]", "train.epochs=4"]


def _done(out: Path) -> dict:
    try:
        return json.loads((out / "state.json").read_text()).get("done", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


KILL_POINTS = {
    "during-dense": lambda out: (out / "run.log").is_file() and "training" in (out / "run.log").read_text(),
    "after-dense": lambda out: "dense" in _done(out),
    "after-first-level": lambda out: "level-50" in _done(out),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = prunekit("run", "configs/quickstart.yaml", "--output", str(out), sets=TWO_LEVELS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return report_of(out)


def _kill_when(out: Path, reached) -> dict:
    proc = start("run", "configs/quickstart.yaml", "--output", str(out), sets=TWO_LEVELS)
    deadline = time.time() + 300
    while not reached(out):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the kill point:\n{proc.communicate()[0][-2000:]}")
        assert time.time() < deadline, "never reached the kill point"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _done(out)


def _resume_and_compare(out: Path, finished: dict, reference: dict) -> None:
    mtimes = {k: (out / k / "model.safetensors").stat().st_mtime_ns for k in finished}
    proc = prunekit("run", "configs/quickstart.yaml", "--output", str(out), sets=TWO_LEVELS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k in finished:  # nothing finished is recomputed
        assert f"{k}: finished earlier" in proc.stderr
        assert (out / k / "model.safetensors").stat().st_mtime_ns == mtimes[k]
    assert stable(report_of(out)) == stable(reference)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".prunekit.lock"]
    assert leftovers == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_kill9_then_resume_gives_the_same_report(reference: dict, tmp_path: Path, kill_point: str) -> None:
    out = tmp_path / "run"
    finished = _kill_when(out, KILL_POINTS[kill_point])
    assert not (out / "report.json").exists()
    if kill_point == "after-dense":
        # Also the state a kill during level-50's checkpoint write leaves: a half-written hidden temp
        # folder (write_folder renames it into place only once complete), level-50 not recorded.
        tmp = out / ".level-50.x7_kq0.tmp"
        tmp.mkdir(exist_ok=True)
        (tmp / "model.safetensors").write_bytes(b"\x00" * 64)
        assert "level-50" not in finished
    _resume_and_compare(out, finished, reference)
