"""Configs a careless user or an attacker writes: each is one line and exit code 2, before any work.

Every case here once ended in a traceback, a hang, a silent default or a write outside ``runs/``.
They run ``prunekit.cli.main`` in this process (the real command, minus the interpreter start-up).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import TINY, cli_error

BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def _run(tmp_path: Path, cfg: Path, *extra: str) -> list[str]:
    args = ["run", str(cfg), "--output", str(tmp_path / "out")]
    for s in TINY:
        args += ["--set", s]
    return args + list(extra)


# (config text, words the one error line must contain)
BAD_VALUES = {
    "infinite epochs": ("train: {epochs: .inf}", ["train.epochs", "finite"]),
    "nan lr": ("finetune: {lr: .nan}", ["finetune.lr", "finite"]),
    "negative seed": ("seed: -1", ["seed", "2**32"]),
    "huge seed": (f"seed: {2**70}", ["seed", "2**32"]),
    "name with ..": ("name: ../../../x", ["name", "one folder name"]),
    "absolute name": ("name: /etc/prunekit-x", ["name", "one folder name"]),
    "name with slash": ("name: runs/x", ["name"]),
    "empty name": ("name: ''", ["name"]),
    "string bool": ("model: {trust_remote_code: 'yes'}", ["model.trust_remote_code", "true or false"]),
    "yaml 1.1 bool": ("model: {trust_remote_code: yes}", ["model.trust_remote_code", "true or false"]),
    "on as bool": ("estimate: {enabled: on}", ["estimate.enabled", "true or false"]),
    "int bool": ("estimate: {enabled: 1}", ["estimate.enabled", "true or false"]),
    "huge batch": (f"train: {{batch_size: {10**12}}}", ["train.batch_size"]),
    "huge max_length": (f"data: {{max_length: {10**12}}}", ["data.max_length"]),
    "huge threads": ("threads: 100000", ["threads"]),
    "zero threads": ("threads: 0", ["threads"]),
    "top-level list": ("- a\n- b", ["mapping"]),
    "alias in name": ("x: &n quickstart\nname: *n", ["alias"]),
    "anchor only": ("model: &m {name: mlp}", ["anchor"]),
    "alias bomb in data.files": (BOMB + "data: {files: {train: *i}}", ["alias"]),
    "alias bomb in model.kwargs": (BOMB + "model: {kwargs: {width: *i}}", ["alias"]),
    "empty file": ("", ["empty"]),
    "only comments": ("# nothing here\n", ["empty"]),
    "null document": ("null", ["empty"]),
    "bad yaml": ("train: {epochs: [1, 2}", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_config_is_one_line(tmp_path: Path, capsys, case: str) -> None:
    text, needles = BAD_VALUES[case]
    cfg = _write(tmp_path, text)
    cli_error(capsys, ["run", str(cfg), "--output", str(tmp_path / "out")], str(cfg), *needles)
    assert not (tmp_path / "out").exists()  # nothing was created


BAD_OVERRIDES = {
    "infinite epochs": ("train.epochs=.inf", ["train.epochs", "finite"]),
    "huge seed": (f"seed={2**70}", ["seed"]),
    "alias in an override": ("name=*x", ["alias"]),
    "string bool": ("estimate.enabled=yes", ["estimate.enabled", "true or false"]),
    "bad name": ("name=../x", ["name"]),
    "a 350 TB model": ("model.kwargs.width=4194304", ["out of memory", "model.kwargs"]),
}


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_override_is_one_line(tmp_path: Path, capsys, case: str) -> None:
    override, needles = BAD_OVERRIDES[case]
    cli_error(capsys, [*_run(tmp_path, Path("configs/quickstart.yaml")), "--set", override], *needles)
    assert not (tmp_path / "out").exists()


def test_binary_config_names_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, bytes(range(256)) * 4, "model.safetensors")
    cli_error(capsys, ["run", str(cfg)], str(cfg), "UTF-8", "YAML")


def test_latin1_config_names_the_file_and_the_fix(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, "name: caf\xe9\n".encode("latin-1"))
    cli_error(capsys, ["run", str(cfg)], str(cfg), "UTF-8")


def test_config_that_is_a_folder(tmp_path: Path, capsys) -> None:
    cli_error(capsys, ["run", str(tmp_path)], str(tmp_path), "not a file")


def test_long_values_are_truncated_in_messages(tmp_path: Path, capsys) -> None:
    cfg = _write(tmp_path, "model: {name: [" + ", ".join(["abcdefgh"] * 5000) + "]}")
    assert len(cli_error(capsys, ["run", str(cfg)], "model.name")) < 400
    cfg = _write(tmp_path, "seed: " + "7" * 5000 + "x")
    line = cli_error(capsys, ["run", str(cfg)], "seed")
    assert len(line) < 400 and "..." in line


def test_alias_bomb_is_refused_fast_and_small(tmp_path: Path) -> None:
    """Under a 2 GiB address-space cap and a 60 s timeout (expanded, the bomb is 10**9 strings)."""
    import subprocess
    import sys

    cfg = _write(tmp_path, BOMB + "name: *i\n")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from prunekit.config import ConfigError, load_config\n"
        "try:\n"
        "    load_config(sys.argv[1])\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alias" in proc.stdout and str(cfg) in proc.stdout


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_output_path_that_is_a_file(tmp_path: Path, capsys, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "sub" / "run"
    args = _run(tmp_path, Path("configs/quickstart.yaml"))
    args[args.index("--output") + 1] = str(out)
    cli_error(capsys, args, str(blocker), "--output")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("section", ["train", "finetune"])
def test_diverged_training_stops_the_stage_and_names_the_recipe(tmp_path: Path, capsys, section: str) -> None:
    """lr 1e30 sends the loss to inf / NaN: one line naming the recipe, and no result recorded."""
    import json

    out = tmp_path / "out"
    args = [*_run(tmp_path, Path("configs/quickstart.yaml")), "--set", f"{section}.lr=1e30"]
    cli_error(capsys, args, "diverged", f"{section}.lr")
    assert not (out / "report.json").exists()
    done = json.loads((out / "state.json").read_text())["done"]
    assert ("dense" in done) == (section == "finetune") and "level-50" not in done


def test_thread_count_is_part_of_the_fingerprint() -> None:
    from prunekit.config import RunConfig

    assert RunConfig().threads == 1  # fixed by default, not the machine's core count
    assert RunConfig(threads=2).fingerprint() != RunConfig().fingerprint()
