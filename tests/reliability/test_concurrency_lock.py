"""Two real ``prunekit run`` processes into one folder: the second stops at once, naming the first's pid.

Without the lock both exited 0 and left a mixed folder (one run's config, the other's report).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from reliability_helpers import TINY, error_line, prunekit, report_of, start

LONGER = [*TINY, "data.max_train_samples=2000", "train.epochs=30"]  # ~25 s: the second runs arrive meanwhile


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_into_a_locked_folder_names_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = start("run", "configs/quickstart.yaml", "--output", str(out), sets=LONGER)
    try:
        _wait_for(out / "state.json", first)  # the folder is started, so its lock is held
        cases = [([*LONGER, "seed=1"], []), (LONGER, []), ([*LONGER, "seed=1"], ["--overwrite"])]
        # another config, the same config, another config with --overwrite: all at once
        seconds = [
            start("run", "configs/quickstart.yaml", "--output", str(out), *flags, sets=sets)
            for sets, flags in cases
        ]
        for second in seconds:
            err, _ = second.communicate(timeout=120)  # stderr merged into stdout
            assert first.poll() is None, "the first run ended too soon to test the lock: lengthen LONGER"
            assert second.returncode == 2, err[-3000:]
            assert error_line(err).endswith(
                f"(pid {first.pid}): wait for it to finish, or choose another --output"
            )
            assert str(out) in error_line(err)
        log, _ = first.communicate(timeout=300)
        assert first.returncode == 0, log[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert report_of(out)["seed"] == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    # released on exit: the same command now resumes (nothing to do) instead of being refused
    again = prunekit("run", "configs/quickstart.yaml", "--output", str(out), sets=LONGER)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished earlier" in again.stderr


def test_stale_temp_folders_are_removed_on_the_next_start(finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    # What a kill -9 in the middle of a checkpoint write / report write leaves behind.
    (out / ".level-50.k9x2_q1.tmp").mkdir()
    (out / ".level-50.k9x2_q1.tmp" / "model.safetensors").write_bytes(b"\0" * 100)
    (out / ".dense.old").mkdir()
    (out / ".report.json.3kq1.tmp").write_text("{")
    (out / ".accuracy_vs_params.png.tmp.png").write_bytes(b"\x89PNG")
    (out / "notes.txt").write_text("the user's own file stays")
    proc = prunekit("run", "configs/quickstart.yaml", "--output", str(out), sets=TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hidden = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".prunekit.lock")
    assert hidden == []
    assert (out / "notes.txt").read_text() == "the user's own file stays"
