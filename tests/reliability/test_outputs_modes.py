"""Every output of a run, checkpoints included, gets the same permissions: 0666 / 0777 minus the
umask (0644 files, 0755 folders under the usual 022). ``model.safetensors`` used to be 0600."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from reliability_helpers import ROOT, TINY, argv, env


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _expect(folder: Path, mask: int) -> None:
    modes = _modes(folder)
    assert any(name.endswith("model.safetensors") for name in modes)
    for name, mode in modes.items():
        want = (0o777 if (folder / name).is_dir() else 0o666) & ~mask
        assert mode == want, f"{name}: {oct(mode)} (want {oct(want)})"


def test_outputs_follow_the_umask(finished_run: Path) -> None:
    _expect(finished_run, _umask())


def test_outputs_follow_another_umask(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        argv("run", "configs/quickstart.yaml", "--output", str(out), sets=TINY),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _expect(out, 0o027)
