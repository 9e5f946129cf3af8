"""Fixtures of the reliability suite (helpers live in reliability_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import TINY, prunekit


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (quickstart config, TINY overrides), shared by the suite: read it, copy it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = prunekit("run", "configs/quickstart.yaml", "--output", str(out), sets=TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
