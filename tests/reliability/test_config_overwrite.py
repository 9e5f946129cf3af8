"""``--overwrite`` deletes nothing until everything is validated, and never a folder prunekit did not make.

Each bad config below once emptied a finished run folder before failing (or failed after deleting).
The finished run's files must be byte-identical afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from reliability_helpers import TINY, assert_one_line_error, cli_error, folder_digest, prunekit

BAD = {  # overrides, a word of the error line
    "infinite epochs": (["train.epochs=.inf"], "train.epochs"),
    "negative seed": (["seed=-1"], "seed"),
    "huge seed": ([f"seed={2**70}"], "seed"),
    "name outside runs": (["name=../../../x"], "name"),
    "unknown planner": (["prune.planner=nope"], "prune.planner"),
    "missing model path": (["model.name=hf", "model.path=/nonexistent/model"], "/nonexistent/model"),
    "unknown model": (["model.name=nope"], "nope"),
    "unreachable level": (["prune.levels=[0.999]"], "0.999"),
    "batch too large": ([f"finetune.batch_size={2**30}"], "finetune.batch_size"),
}


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_with_overwrite_leaves_the_run(
    finished_run: Path, tmp_path: Path, capsys, case: str
) -> None:
    out = _copy(finished_run, tmp_path)
    before = folder_digest(out)
    overrides, needle = BAD[case]
    args = ["run", "configs/quickstart.yaml", "--output", str(out), "--overwrite"]
    for s in [*TINY, "seed=1", *overrides]:  # seed=1: another config, so --overwrite would delete
        args += ["--set", s]
    cli_error(capsys, args, needle)
    assert folder_digest(out) == before


def test_overwrite_never_deletes_a_folder_prunekit_did_not_make(tmp_path: Path, capsys) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("years of work")
    (out / "config.yaml").write_text("not prunekit's")
    args = ["run", "configs/quickstart.yaml", "--output", str(out), "--overwrite"]
    for s in TINY:
        args += ["--set", s]
    cli_error(capsys, args, str(out), "not a prunekit run folder")
    assert (out / "chapter1.tex").read_text() == "years of work"


def test_name_cannot_reach_another_folder(tmp_path: Path, capsys) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "state.json").write_text("{}")  # looks like a run folder
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: {victim}\n")
    cli_error(capsys, ["run", str(cfg), "--overwrite"], "name")
    assert (victim / "state.json").read_text() == "{}"


@contextmanager
def _read_only(folder: Path):
    """Make ``folder`` read-only for this user: permission bits, or (root ignores those) the
    immutable attribute, which stops root too."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_folder_is_one_line_even_when_resuming_a_finished_run(
    finished_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = folder_digest(out)
    with _read_only(out):
        assert not os.access(out, os.W_OK)
        proc = prunekit("run", "configs/quickstart.yaml", "--output", str(out), sets=TINY, timeout=120)
    assert_one_line_error(proc, str(out), "not writable")
    assert folder_digest(out) == before
