"""How the command line ends: an expected failure is one line and exit code 2; a bug is a short
traceback, "this is a bug in prunekit, please report it" and exit code 1 (never passed off as the
user's mistake)."""

from __future__ import annotations

import errno

import pytest

from prunekit.cli import report_failure
from prunekit.config import ConfigError
from prunekit.errors import UserError


def _raised(err: BaseException) -> BaseException:
    try:  # a real raise, so the exception carries a traceback
        raise err
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "err",
    [
        UserError("output folder 'x' is in use: wait"),
        ConfigError("c.yaml: invalid value -1 for 'seed': give 0 <= seed < 2**32"),
        PermissionError(errno.EACCES, "Permission denied", "/srv/out/report.json"),
        OSError(errno.ENOSPC, "No space left on device", "/srv/out/dense"),
        NotADirectoryError(errno.ENOTDIR, "Not a directory", "/srv/file/out"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_expected_failures_are_one_line_exit_2(capsys, err: BaseException) -> None:
    assert report_failure(_raised(err)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), lines
    if isinstance(err, OSError):
        assert err.filename in lines[0]


def test_a_value_error_from_prunekit_is_a_user_error(capsys) -> None:
    from prunekit.config import DataConfig
    from prunekit.data import load_data

    try:
        load_data(DataConfig(name="csv"), seed=0)  # a prunekit validator: "needs data.files"
    except ValueError as err:
        assert report_failure(err) == 2
    assert "data.files" in capsys.readouterr().err


def test_a_value_error_from_a_library_is_a_bug(capsys) -> None:
    import numpy as np

    try:
        np.zeros(2).reshape(3)
    except ValueError as err:
        assert report_failure(err) == 1
    assert "this is a bug in prunekit" in capsys.readouterr().err


def test_multi_line_message_keeps_its_first_line(capsys) -> None:
    assert report_failure(_raised(UserError("first\nsecond\nthird"))) == 2
    assert capsys.readouterr().err.strip() == "prunekit: error: first"


def test_very_long_message_is_cut(capsys) -> None:
    assert report_failure(_raised(UserError("x" * 100_000))) == 2
    assert len(capsys.readouterr().err) < 1200


@pytest.mark.parametrize(
    "err", [KeyError("plan"), TypeError("bad operand"), RuntimeError("shape mismatch"), AssertionError()]
)
def test_a_bug_is_a_short_traceback_and_exit_1(capsys, err: BaseException) -> None:
    assert report_failure(_raised(err)) == 1
    text = capsys.readouterr().err
    assert "Traceback" in text and "this is a bug in prunekit, please report it" in text
    assert type(err).__name__ in text
    assert not text.startswith("prunekit: error:")
    assert len(text.splitlines()) < 40


def test_out_of_memory_is_one_line(capsys) -> None:
    import torch

    try:  # a real allocation failure: 2**45 floats are 128 TiB
        torch.empty(2**45)
    except RuntimeError as err:
        assert report_failure(err) == 2
    assert "out of memory" in capsys.readouterr().err


def test_interrupt_says_how_to_resume(capsys) -> None:
    assert report_failure(_raised(KeyboardInterrupt())) == 130
    assert "resume" in capsys.readouterr().err
