"""CSV files a user points ``data.files`` at: empty, garbage, ragged, or with a column prunekit cannot use.

Each is one line (a ValueError from ``load_data``, exit code 2 from the command), never a
``DatasetGenerationError`` traceback, and never a column dropped in silence.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import cli_error

from prunekit.config import DataConfig
from prunekit.data import load_data

GOOD = "a,b,label\n" + "".join(f"{i % 7}.5,{i % 3},{i % 2}\n" for i in range(40))

BAD_CSV = {
    "empty file": (b"", ["empty"]),
    "header only": (b"a,b,label\n", ["empty"]),
    "binary garbage": (bytes(range(256)) * 8, ["cannot read"]),
    "ragged rows": (b"a,b,label\n1,2,0\n1,2,3,4,5\n1,0\n", ["cannot read"]),
    "text feature column": (
        ("a,comment,label\n" + "".join(f"{i},word{i},{i % 2}\n" for i in range(40))).encode(),
        ["'comment'", "text"],
    ),
}


def _cfg(path: Path) -> DataConfig:
    return DataConfig(name="csv", files={"train": str(path)}, validation_fraction=0.0)


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_bad_csv_is_one_line_value_error(tmp_path: Path, case: str) -> None:
    content, needles = BAD_CSV[case]
    path = tmp_path / "train.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_data(_cfg(path), seed=0)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    for needle in needles:
        assert needle in message, message


def test_good_csv_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(GOOD)
    s = load_data(_cfg(path), seed=0)
    assert s.input_shape == (2,) and s.num_classes == 2


def test_bad_csv_through_the_command(tmp_path: Path, capsys) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes(BAD_CSV["ragged rows"][0])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{name: csv, files: {{train: {path}}}}}\nmodel: {{name: mlp}}\n")
    cli_error(capsys, ["run", str(cfg), "--output", str(tmp_path / "out")], "cannot read")
    assert not (tmp_path / "out").exists()
