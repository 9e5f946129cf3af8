"""Code execution from a checkpoint: editing prunekit.json alone never makes prunekit run code.

The attack folder is live: transformers itself, told to trust it, runs its code (the control below).
prunekit, given a checkpoint whose prunekit.json points at that folder and says
``trust_remote_code: true``, must never import it; a checkpoint that needs remote code is refused
in one line that says how the caller opts in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import bert_checkpoint, edit_meta, evil_folder, one_line, out
from reliability_helpers import ROOT, assert_one_line_error, prunekit

import prunekit as pk
from prunekit.pruning.checkpoint import CheckpointError


@pytest.fixture
def attack(tmp_path: Path):
    marker = tmp_path / "PWNED"
    evil = evil_folder(tmp_path / "evil", marker)
    folder, model, x = bert_checkpoint(tmp_path / "ckpt")
    return folder, model, x, evil, marker


def test_the_attack_folder_is_live(attack, tmp_path: Path) -> None:
    """Negative control: trusting the folder (what prunekit used to do) runs its code."""
    _, _, _, evil, marker = attack
    code = f"from transformers import AutoConfig; AutoConfig.from_pretrained({str(evil)!r}, trust_remote_code=True)"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    assert marker.read_text() == "code ran"


def _point_at(evil: Path, remote_type: bool):
    def change(meta: dict) -> None:
        meta["base"]["trust_remote_code"] = True
        meta["base"]["path"] = str(evil)
        if remote_type:
            meta["base"]["hf_config"]["model_type"] = "evil"
            meta["base"]["hf_config"]["auto_map"] = json.loads((evil / "config.json").read_text())["auto_map"]

    return change


def test_trust_and_path_in_the_checkpoint_are_ignored(attack) -> None:
    folder, model, x, evil, marker = attack
    edit_meta(folder, _point_at(evil, remote_type=False))
    again, _ = pk.load(folder)  # a built-in architecture: rebuilt from the stored config alone
    assert torch.equal(out(again, x), out(model, x))
    assert not marker.exists()


def test_remote_model_type_is_refused_with_the_opt_in(attack) -> None:
    folder, _, _, evil, marker = attack
    edit_meta(folder, _point_at(evil, remote_type=True))
    with pytest.raises(CheckpointError) as err:
        pk.load(folder)
    assert "trust_remote_code=True" in one_line(err.value) and "'evil'" in str(err.value)
    assert not marker.exists()


def test_opting_in_never_reads_code_from_base_path(attack) -> None:
    """Even a caller who trusts remote code gets it from the checkpoint folder only, never base.path."""
    folder, _, _, evil, marker = attack
    edit_meta(folder, _point_at(evil, remote_type=True))
    with pytest.raises(CheckpointError) as err:
        pk.load(folder, trust_remote_code=True)
    assert "never from base.path" in one_line(err.value)
    assert not marker.exists()


def test_hf_reference_without_its_config_is_refused(attack) -> None:
    """Dropping hf_config used to send the 'hf' factory to base.path with the file's trust flag."""
    folder, _, _, evil, marker = attack

    def change(meta: dict) -> None:
        _point_at(evil, remote_type=False)(meta)
        del meta["base"]["hf_config"]

    edit_meta(folder, change)
    for trust in (False, True):
        with pytest.raises(CheckpointError) as err:
            pk.load(folder, trust_remote_code=trust)
        assert "has no hf_config" in one_line(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("attn_implementation", "kernels-community/evil"),  # a hub kernel: downloads and runs code
        ("hf_auto_class", "AutoTokenizer"),  # not an allow-listed model class
        ("hf_auto_class", "__import__"),
    ],
)
def test_class_and_attention_names_come_from_allow_lists(attack, field: str, value: str) -> None:
    folder, _, _, _, marker = attack
    edit_meta(folder, lambda m: m["base"].__setitem__(field, value))
    with pytest.raises(CheckpointError) as err:
        pk.load(folder)
    assert "is not one of" in one_line(err.value)


def test_code_fetching_keys_inside_the_stored_config_are_dropped(attack) -> None:
    folder, model, x, evil, marker = attack

    def change(meta: dict) -> None:
        hf = meta["base"]["hf_config"]
        hf["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
        hf["_name_or_path"] = str(evil)
        hf["_attn_implementation"] = "kernels-community/evil"
        hf["quantization_config"] = {"quant_method": "bitsandbytes"}

    edit_meta(folder, change)
    again, _ = pk.load(folder)
    assert torch.equal(out(again, x), out(model, x))
    assert again.config._attn_implementation == "eager" and not marker.exists()


def _evil_run_folder(attack, tmp_path: Path, finished_run: Path) -> Path:
    """The edited checkpoint inside a run folder whose config.json also claims trust_remote_code."""
    folder, _, _, evil, _ = attack
    edit_meta(folder, _point_at(evil, remote_type=True))
    run = tmp_path / "downloaded"
    shutil.copytree(folder, run / "level-50")
    config = json.loads((finished_run / "config.json").read_text())
    config["model"]["trust_remote_code"] = True
    (run / "config.json").write_text(json.dumps(config))
    return run / "level-50"


def test_cli_evaluate_and_estimate_refuse_with_exit_2(attack, tmp_path: Path, finished_run: Path) -> None:
    ckpt = _evil_run_folder(attack, tmp_path, finished_run)
    for command in ("evaluate", "estimate"):
        proc = prunekit(command, str(ckpt))
        assert_one_line_error(proc, "--trust-remote-code")
    assert not attack[4].exists()


def test_run_config_checkpoint_uses_the_run_configs_trust(attack, tmp_path: Path, finished_run: Path) -> None:
    """``model.checkpoint:`` in the user's own run config: that config's trust_remote_code decides."""
    ckpt = _evil_run_folder(attack, tmp_path, finished_run)
    config = tmp_path / "mine.yaml"
    config.write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    proc = prunekit(
        "run",
        str(config),
        "--output",
        str(tmp_path / "out"),
        sets=[f"model.checkpoint={ckpt}", "data.max_train_samples=64", "data.max_eval_samples=64"],
    )
    assert_one_line_error(proc, "model.trust_remote_code: true")
    assert not attack[4].exists()


def test_opted_in_remote_code_comes_from_the_checkpoint_folder(tmp_path: Path) -> None:
    """The legitimate use: a remote-code model saved by prunekit carries its code; it loads only when
    the caller trusts it, and then from the checkpoint's own copy (the source folder is gone)."""
    from checkpoint_helpers import hf_reference
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from prunekit.pruning.checkpoint import save
    from prunekit.testing import example_inputs_for

    marker = tmp_path / "RAN"
    source = evil_folder(tmp_path / "source", marker)  # here the "payload" only shows when code runs
    config = AutoConfig.from_pretrained(str(source), trust_remote_code=True, num_labels=3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        config, trust_remote_code=True, attn_implementation="eager"
    ).eval()
    x = example_inputs_for(model)
    folder = save(model, tmp_path / "ckpt", None, {}, hf_reference(model), x)
    assert sorted(p.name for p in folder.glob("*.py")) == ["configuration_evil.py", "modeling_evil.py"]
    shutil.rmtree(source)
    marker.unlink()
    with pytest.raises(CheckpointError) as err:
        pk.load(folder)
    assert "trust_remote_code=True" in one_line(err.value) and not marker.exists()
    again, _ = pk.load(folder, trust_remote_code=True)
    assert marker.exists() and type(again).__name__ == "EvilModel"
    assert torch.equal(out(again, x), out(model, x))
