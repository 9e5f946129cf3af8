"""Fuzzing prunekit.json and the weights header: any edit loads or is one CheckpointError line.

Hypothesis replaces one field (anywhere in the file, to three levels deep) with an arbitrary JSON
value, or flips bytes of the safetensors header with the stored hash fixed up; ``prunekit.load``
must then either give a model or raise a one-line CheckpointError, never another exception.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from checkpoint_helpers import mlp_checkpoint, one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prunekit as pk
from prunekit.pruning.checkpoint import CheckpointError
from prunekit.pruning.checkpoint_weights import sha256_file

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["load", "float32", "tensor", "dict", "hf", "mlp", "torch.load", "../x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_checkpoint(tmp_path_factory.mktemp("fuzz") / "ckpt")[0]


def _paths(obj: Any, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    out = [prefix] if prefix else []
    if depth and isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k), depth - 1)
    elif depth and isinstance(obj, list) and obj:
        out += _paths(obj[0], (*prefix, 0), depth - 1)
    return out


def _set(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _loads_or_refuses(folder: Path) -> None:
    try:
        pk.load(folder)
    except CheckpointError as err:
        one_line(err)


def _copy(original: Path) -> Path:
    folder = Path(tempfile.mkdtemp()) / "ckpt"
    shutil.copytree(original, folder)
    return folder


def test_fuzz_one_field(original: Path) -> None:
    meta = json.loads((original / "prunekit.json").read_text())
    paths = _paths(meta)

    @FUZZ
    @given(path=st.sampled_from(paths), value=JSON)
    def check(path: tuple, value: Any) -> None:
        folder = _copy(original)
        try:
            edited = copy.deepcopy(meta)
            _set(edited, path, value)
            (folder / "prunekit.json").write_text(json.dumps(edited))
            _loads_or_refuses(folder)
        finally:
            shutil.rmtree(folder.parent)

    check()


def test_fuzz_weights_header(original: Path) -> None:
    data = (original / "model.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, header_end - 1), st.integers(0, 255)), min_size=1, max_size=4))
    def check(flips: list[tuple[int, int]]) -> None:
        folder = _copy(original)
        try:
            raw = bytearray(data)
            for at, byte in flips:
                raw[at] = byte
            (folder / "model.safetensors").write_bytes(bytes(raw))
            meta = json.loads((folder / "prunekit.json").read_text())
            meta["weights_sha256"] = sha256_file(folder / "model.safetensors")  # an attacker fixes the hash
            (folder / "prunekit.json").write_text(json.dumps(meta))
            _loads_or_refuses(folder)
        finally:
            shutil.rmtree(folder.parent)

    check()


def test_fuzz_hf_config_field(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny BERT's stored transformers config: any one key set to anything loads or is refused."""
    from checkpoint_helpers import bert_checkpoint

    import prunekit.pruning.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "META_BUILD_TIMEOUT_S", 2.0)  # a layer-count bomb fails in 2 s, not 60
    original = bert_checkpoint(tmp_path_factory.mktemp("fuzz_hf") / "ckpt")[0]
    meta = json.loads((original / "prunekit.json").read_text())
    keys = sorted(meta["base"]["hf_config"])
    values = (
        JSON | st.integers(-1, 10**7) | st.sampled_from(["eager", "sdpa", "org/kernel", "float16", "load"])
    )

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(key=st.sampled_from(keys) | st.text(max_size=12), value=values)
    def check(key: str, value: Any) -> None:
        folder = _copy(original)
        try:
            edited = copy.deepcopy(meta)
            edited["base"]["hf_config"][key] = value
            (folder / "prunekit.json").write_text(json.dumps(edited))
            _loads_or_refuses(folder)
        finally:
            shutil.rmtree(folder.parent)

    check()
