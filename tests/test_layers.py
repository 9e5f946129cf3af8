"""The layering of DESIGN.md section 2, as pyproject.toml's import-linter contracts state it.

The real tree must keep the contracts, and a copy of the package with one back-edge added (an import
inside a function, the kind that is easiest to slip in) or with an import cycle must be refused, so a
contract that checks nothing cannot pass here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports on the ``prunekit`` package found in ``tree``, with the project's contracts."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "prunekit", tmp_path / "prunekit", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code.strip() + "\n")


def test_the_tree_keeps_the_layer_contracts() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_back_edge_inside_a_function_is_refused(package_copy: Path) -> None:
    # the vocabulary layer reaching up into orchestration, lazily, as a shortcut would
    _append(
        package_copy / "prunekit" / "structure" / "group.py",
        """
def _shortcut():
    from prunekit.pipeline import run

    return run
""",
    )
    result = _lint(package_copy)
    assert result.returncode != 0
    assert "prunekit.structure.group -> prunekit.pipeline" in result.stdout, result.stdout


def test_the_planner_may_not_import_surgery(package_copy: Path) -> None:
    _append(
        package_copy / "prunekit" / "planner" / "target.py", "from prunekit.pruning.apply import apply_plan_"
    )
    result = _lint(package_copy)
    assert result.returncode != 0
    assert "prunekit.planner.target -> prunekit.pruning.apply" in result.stdout, result.stdout


def test_an_import_cycle_inside_a_package_is_refused(package_copy: Path) -> None:
    _append(package_copy / "prunekit" / "data" / "arrays.py", "from prunekit.data import splits as _splits")
    result = _lint(package_copy)
    assert result.returncode != 0
    assert "No cycles are allowed in prunekit.data" in result.stdout, result.stdout


def test_no_module_imports_the_package_facade() -> None:
    """``prunekit/__init__.py`` resolves names lazily by string, which import-linter cannot see: a module
    that imports the facade could reach any layer through it. Inside the package, import the module
    that defines a name."""
    graph = grimp.build_graph("prunekit")
    importers = sorted(graph.find_modules_that_directly_import("prunekit"))
    assert importers == [], f"import the defining module instead of the facade in: {importers}"


def test_every_module_of_the_package_has_a_layer() -> None:
    """A new top-level module or package must be placed in a layer, else nothing checks its imports."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: import-linter's own dependency
        import tomli as tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    placed = {name.strip().strip("()") for layer in layers for name in layer.replace("|", ":").split(":")}
    children = {
        p.stem for p in (ROOT / "prunekit").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    missing = sorted(children - placed - {"__init__"})
    assert missing == [], f"add these modules to a layer in pyproject.toml [tool.importlinter]: {missing}"
