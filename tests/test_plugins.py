"""Extension without editing prunekit: the README's plugin example runs as written, and ``imports`` fails
in one line naming the module."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.cli import main

ROOT = Path(__file__).resolve().parents[1]
PRUNEKIT = Path(sys.executable).with_name("prunekit")


def _readme_files() -> dict[str, str]:
    """The blocks of the README's "Extending prunekit" section marked ``<!-- file: NAME -->``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Extending prunekit", 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", section, flags=re.S))
    assert {"my_planners.py", "my_run.yaml"} <= set(files), sorted(files)
    assert "prunekit plan my_run.yaml" in section
    return files


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's files, written once: a plugin file runs once per process, as in a real session."""
    folder = tmp_path_factory.mktemp("plugin_example")
    for name, body in _readme_files().items():
        (folder / name).write_text(body)
    return folder


def _plan_cli(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [str(PRUNEKIT), "plan", "my_run.yaml"] + [a for o in overrides for a in ("--set", o)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_the_readme_plugin_planner_runs_through_prunekit_plan(example: Path) -> None:
    result = _plan_cli(example)
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert line["planner"] == "strided"
    assert line["achieved"]["within_tolerance"] and abs(line["achieved"]["params_saved"] - 0.5) <= 0.01


def test_the_plugin_option_from_yaml_reaches_the_planner(example: Path, monkeypatch) -> None:
    from prunekit.config import load_config
    from prunekit.task import Task, make_level_plan

    monkeypatch.chdir(example)
    cfg = load_config("my_run.yaml", ["prune.planner_options.offset=3"])
    task = Task(cfg)
    plan, groups = make_level_plan(task, task.build_dense(), 0.5, seed=1)
    assert plan.planner == "strided" and plan.extra["offset"] == 3
    for g in groups:
        n, k = g.num_units, len(plan.keep[g.name])
        assert plan.keep[g.name] == sorted((3 + i * n // k) % n for i in range(k))


def test_a_bad_plugin_option_is_one_line_exit_2(example: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(example)
    assert main(["plan", "my_run.yaml", "--set", "prune.planner_options.stride=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'stride'" in err and "offset" in err  # names the allowed options
    assert main(["plan", "my_run.yaml", "--set", "prune.planner_options.offset=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "offset=-1 must be >= 0" in err


@pytest.mark.parametrize(
    ("entry", "source", "names"),
    [
        ("no_such_plugin_module", None, ["'no_such_plugin_module'", "ModuleNotFoundError"]),
        ("missing_plugin.py", None, ["'missing_plugin.py'", "FileNotFoundError"]),
        (
            "broken_plugin.py",
            "raise RuntimeError('boom at import')\n",
            ["'broken_plugin.py'", "boom at import"],
        ),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_one_line_naming_it(
    tmp_path: Path, monkeypatch, capsys, entry: str, source: str | None, names: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    if source is not None:
        (tmp_path / entry).write_text(source)
    (tmp_path / "run.yaml").write_text(f"name: bad_plugin\nimports: [{entry}]\n")
    assert main(["plan", "run.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and all(n in err for n in names), err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_runs_without_imports_keep_their_fingerprint() -> None:
    """Adding the key must not make every earlier run folder look like another config's."""
    import hashlib

    from prunekit.config import RunConfig

    cfg = RunConfig(name="fp")
    old = cfg.model_dump(mode="json")
    for key in ("output_dir", "imports", "recovery"):  # keys added later, dropped while at their defaults
        old.pop(key)
    old["prune"].pop("experts")  # likewise
    assert cfg.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert RunConfig(name="fp", imports=["json"]).fingerprint() != cfg.fingerprint()
