"""Damaged, foreign and edited checkpoint files: each is one CheckpointError line, never a traceback.

Cases from the hardening issue: truncated / foreign safetensors, extra / missing / renamed tensors,
malformed prunekit.json fields, size bombs (which must fail before allocating), the self-attested
hash (replaced weights + replaced hash pass the integrity check but not the caller's expected hash),
file modes and stale temporary folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import edit_meta, mlp_checkpoint, one_line, out
from reliability_helpers import ROOT, assert_one_line_error, prunekit
from safetensors.torch import load_file, save_file

import prunekit as pk
from prunekit.pruning.checkpoint import CheckpointError, checkpoint_info, save, verify_checkpoint
from prunekit.pruning.checkpoint_weights import sha256_file


@pytest.fixture
def mlp(tmp_path: Path):
    return mlp_checkpoint(tmp_path / "ckpt")


def refused(folder: Path, *needles: str, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        pk.load(folder, **kw)
    line = one_line(err.value)
    for needle in needles:
        assert needle in line, line
    return line


def rewrite_weights(folder: Path, change) -> None:
    """Replace the weights with ``change(tensors)`` and fix the stored hash, as an attacker would."""
    path = folder / "model.safetensors"
    tensors = change(load_file(str(path)))
    save_file(tensors, str(path))
    edit_meta(folder, lambda m: m.__setitem__("weights_sha256", sha256_file(path)))


# --- the weights file ----------------------------------------------------------------------------


def test_truncated_weights(mlp) -> None:
    folder = mlp[0]
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    refused(folder, "truncated")


@pytest.mark.parametrize("payload", [b"", b"\x00" * 4, b"not safetensors at all", b"\xff" * 64])
def test_garbage_weights(mlp, payload: bytes) -> None:
    (mlp[0] / "model.safetensors").write_bytes(payload)
    refused(mlp[0], "model.safetensors")


def test_foreign_safetensors(mlp) -> None:
    rewrite_weights(mlp[0], lambda t: {"foo.weight": torch.zeros(3, 3)})
    refused(mlp[0], "'foo.weight'", "does not declare")


def test_extra_tensor(mlp) -> None:
    rewrite_weights(mlp[0], lambda t: t | {"extra": torch.zeros(2)})
    refused(mlp[0], "'extra'")


def test_missing_tensor(mlp) -> None:
    def drop(t):
        t.pop(sorted(t)[0])
        return t

    rewrite_weights(mlp[0], drop)
    refused(mlp[0], "lacks tensor")


def test_renamed_tensor(mlp) -> None:
    def rename(t):
        name = sorted(t)[0]
        t["renamed." + name] = t.pop(name)
        return t

    rewrite_weights(mlp[0], rename)
    refused(mlp[0], "'renamed.")


def test_tensor_of_another_dtype(mlp) -> None:
    rewrite_weights(mlp[0], lambda t: {k: v.to(torch.int64) for k, v in t.items()})
    refused(mlp[0], "I64")


def test_reshaped_tensor_with_matching_metadata(mlp) -> None:
    """File and shape table edited together: the rebuilt model is the judge."""
    folder = mlp[0]
    name = sorted(load_file(str(folder / "model.safetensors")))[0]
    rewrite_weights(folder, lambda t: t | {name: torch.zeros(*[d + 1 for d in t[name].shape])})
    edit_meta(folder, lambda m: m["shapes"].__setitem__(name, [d + 1 for d in m["shapes"][name]]))
    refused(folder, "other shapes than were saved")


# --- the self-attested hash ----------------------------------------------------------------------


def test_replaced_weights_and_hash_pass_integrity_but_not_authenticity(mlp) -> None:
    folder, model, x = mlp
    published = checkpoint_info(folder)["checkpoint_sha256"]
    assert pk.load(folder, expected_sha256=published)[0] is not None
    rewrite_weights(folder, lambda t: {k: torch.zeros_like(v) for k, v in t.items()})
    zeroed, _ = pk.load(folder)  # integrity only: the attacker rewrote the stored hash too
    assert not torch.equal(out(zeroed, x), out(model, x))
    refused(folder, "not the expected", expected_sha256=published)
    weights_only = sha256_file(folder / "model.safetensors")
    refused(folder, "model.safetensors alone", expected_sha256=weights_only)
    refused(folder, "not 64 hex digits", expected_sha256="abc")
    proc = prunekit("info", str(folder), "--sha256", published)
    assert_one_line_error(proc, "not the expected")


def test_digest_is_the_sha256sum_listing(mlp) -> None:
    """README: ``cd FOLDER && LC_ALL=C sha256sum $(LC_ALL=C ls) | sha256sum`` gives the same digest."""
    folder = mlp[0]
    env = dict(os.environ, LC_ALL="C")
    listing = subprocess.run(
        "sha256sum $(ls) | sha256sum",
        shell=True,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert listing.stdout.split()[0] == checkpoint_info(folder)["checkpoint_sha256"]
    verify_checkpoint(folder, listing.stdout.split()[0].upper())


# --- prunekit.json fields ------------------------------------------------------------------------

FIELD_CASES = {
    "shapes a list": (lambda m: m.__setitem__("shapes", [[1, 2]]), "shapes"),
    "shape of strings": (lambda m: m["shapes"].__setitem__(sorted(m["shapes"])[0], ["a"]), "shapes."),
    "negative dim": (lambda m: m["shapes"].__setitem__(sorted(m["shapes"])[0], [-1]), "shapes."),
    "unknown example kind": (lambda m: m["example_inputs"].__setitem__("kind", "pickle"), "kind must be"),
    "dtype load": (lambda m: m["example_inputs"].__setitem__("dtype", "load"), "'load' is not one of"),
    "dtype float32 via torch.": (
        lambda m: m["example_inputs"].__setitem__("dtype", "torch.float32"),
        "dtype",
    ),
    "example shape bomb": (
        lambda m: m["example_inputs"].__setitem__("shape", [2, 1 << 20, 1 << 20]),
        "elements",
    ),
    "example batch bomb": (lambda m: m["example_inputs"].__setitem__("shape", [1 << 30, 64]), "batch"),
    "format version a string": (lambda m: m.__setitem__("format_version", "1"), "format_version"),
    "trust flag a string": (lambda m: m["base"].__setitem__("trust_remote_code", "yes"), "true or false"),
    "unknown top-level field": (lambda m: m.__setitem__("run_this", "rm -rf /"), "unknown fields"),
    "unknown base field": (lambda m: m["base"].__setitem__("module", "os"), "unknown fields"),
    "unknown model name": (lambda m: m["base"].__setitem__("name", "no_such_model"), "unknown model"),
    "kwargs of the wrong type": (
        lambda m: m["base"]["kwargs"].__setitem__("hidden", "wide"),
        "cannot be built",
    ),
    "plan keep of strings": (lambda m: next(iter(m["plan"]["keep"].values())).append("x"), "plan.keep"),
    "plan units out of range": (
        lambda m: m["plan"]["keep"].__setitem__(next(iter(m["plan"]["keep"])), [0, 10**6]),
        "plan does not fit",
    ),
    "plan for another model": (lambda m: m["plan"]["num_units"].__setitem__("nope", 3), "plan does not fit"),
    "weights hash not hex": (lambda m: m.__setitem__("weights_sha256", "zz"), "hex"),
    "base not a mapping": (lambda m: m.__setitem__("base", "mlp"), "base"),
}


@pytest.mark.parametrize("case", list(FIELD_CASES))
def test_malformed_field(mlp, case: str) -> None:
    change, needle = FIELD_CASES[case]
    edit_meta(mlp[0], change)
    refused(mlp[0], needle)
    if case == "unknown example kind":  # and through the CLI: exit code 2
        assert_one_line_error(prunekit("info", str(mlp[0])), needle)


@pytest.mark.parametrize(
    "text", ["[" * 100_000, '{"format_version": ' + "9" * 5000 + "}", "\udcff", "", "null", "{} {}"]
)
def test_unparseable_metadata(mlp, text: str) -> None:
    (mlp[0] / "prunekit.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(mlp[0], "prunekit.json")


# --- size bombs: refused before anything is allocated --------------------------------------------


def test_base_kwargs_width_bomb(mlp) -> None:
    edit_meta(mlp[0], lambda m: m["base"]["kwargs"].__setitem__("hidden", [4194304, 4194304]))
    refused(mlp[0], "GiB", "base.kwargs")


BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # the bomb asks for 64 TiB
import prunekit
from prunekit.pruning.checkpoint import CheckpointError
try:
    prunekit.load(sys.argv[1])
except CheckpointError as err:
    print("REFUSED", err)
"""


def test_width_bomb_under_a_memory_cap(mlp) -> None:
    edit_meta(mlp[0], lambda m: m["base"]["kwargs"].__setitem__("hidden", [4194304, 4194304]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", BOMB, str(mlp[0])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "REFUSED" in proc.stdout and "GiB" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_real_minilm_config_bomb(tmp_path: Path) -> None:
    """The real MiniLM (22.7M parameters): an edited hf_config asking for a huge FFN is refused."""
    from prunekit.config import ModelConfig
    from prunekit.models import build_model, describe

    cfg = ModelConfig(name="minilm")
    model = build_model(cfg, 3, (16,)).eval()
    x = {
        "input_ids": torch.randint(1000, 2000, (2, 16)),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
    }
    folder = save(model, tmp_path / "m", None, {}, describe(cfg, 3, (16,)), x)
    assert torch.equal(out(pk.load(folder)[0], x), out(model, x))
    edit_meta(folder, lambda m: m["base"]["hf_config"].__setitem__("intermediate_size", 10**7))
    refused(folder, "GiB")
    edit_meta(folder, lambda m: m["base"]["hf_config"].__setitem__("dtype", "load"))
    refused(folder, "dtype")


# --- modes and leftovers -------------------------------------------------------------------------


def test_files_are_shared_modes_and_stale_temps_go(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        stale = tmp_path / ".level-50.k3j2h1g0.tmp"  # what a kill during a checkpoint write leaves
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"partial")
        folder = mlp_checkpoint(tmp_path / "ckpt")[0]
    finally:
        os.umask(old)
    assert not stale.exists()
    assert (folder.stat().st_mode & 0o777) == 0o755
    assert {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()} == {
        "model.safetensors": 0o644,
        "prunekit.json": 0o644,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert json.loads((folder / "prunekit.json").read_text())["format_version"] == 1


def test_layer_count_bomb_is_stopped_in_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A million layers take no memory on the meta device but would take an hour to build."""
    from checkpoint_helpers import bert_checkpoint

    import prunekit.pruning.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "META_BUILD_TIMEOUT_S", 3.0)
    folder = bert_checkpoint(tmp_path / "b")[0]
    edit_meta(folder, lambda m: m["base"]["hf_config"].__setitem__("num_hidden_layers", 10**6))
    refused(folder, "took over 3 s")
