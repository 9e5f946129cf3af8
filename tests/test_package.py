"""Package-level promises: lean imports, the public API, and no pickle on load paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import prunekit

ROOT = Path(__file__).parent.parent


def test_import_is_lean() -> None:
    code = "import sys, prunekit, prunekit.cli, prunekit.config; print(sorted(m for m in ('transformers', 'datasets', 'torch_pruning', 'accelerate') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves() -> None:
    for name in prunekit.__all__:
        assert getattr(prunekit, name) is not None, name


def test_no_unsafe_deserialisation_in_the_package() -> None:
    offenders = []
    for path in (ROOT / "prunekit").rglob("*.py"):
        text = path.read_text()
        for bad in ("pickle.load", "yaml.load(", "yaml.unsafe_load", "yaml.full_load"):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert offenders == []
