"""The causal-LM task end to end through `prunekit run`: train a tiny LLaMA, prune 2 levels, recover,
report; the level checkpoints reload bit-identically and generate; bad input fails before any work."""

import json

import pytest
import torch
import yaml

from prunekit.cli import main
from prunekit.config import load_config
from prunekit.data.lm_text import build_lm_data, tweet_texts
from prunekit.errors import UserError
from prunekit.metrics.perplexity import perplexity
from prunekit.pipeline import run
from prunekit.pruning import load

CFG = {
    "name": "lm_tiny",
    "seed": 0,
    "data": {"name": "lm_text", "path": "tweets", "max_length": 32, "batch_size": 64},
    "model": {
        "name": "tiny_llama",
        "kwargs": {
            "vocab_size": 300,
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": 64,
        },
    },
    "train": {"max_steps": 30, "batch_size": 16, "lr": 1.0e-2},
    "finetune": {"max_steps": 5, "batch_size": 16, "lr": 1.0e-3},
    "prune": {"planner": "uniform", "importance": "wanda", "levels": [0.3, 0.5], "importance_batches": 2},
    "evaluate": {"latency_repeats": 2, "latency_warmup": 1},
}


def _write(tmp_path, cfg):
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_lm_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(_write(tmp_path, CFG)), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    dense, levels = report["dense"], report["levels"]
    assert dense["perplexity"] < report["unigram_perplexity"]  # 30 steps already beat the unigram
    assert [round(lv["params_saved"], 2) for lv in levels] == [0.3, 0.5]
    assert all(lv["macs_per_token"] < dense["macs_per_token"] for lv in levels)
    assert (out / "perplexity_vs_params.png").is_file() and "unigram baseline" in (
        out / "report.md"
    ).read_text()
    model, meta = load(out / "level-50")
    data = build_lm_data(tweet_texts(), 32, load_tokenizer_of(out), calibration_blocks=32)
    assert (
        perplexity(model, data.test.batches(64))["perplexity"] == levels[1]["perplexity"]
    )  # reload is exact
    again, _ = load(out / "level-50")
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    generated = model.generate(input_ids=ids[:1, :4], max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 9)
    assert run(load_config(_write(tmp_path, CFG)), out)["levels"] == levels  # resumes: nothing recomputed


def load_tokenizer_of(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder / "tokenizer")


def test_lm_run_rejects_bad_model_and_epoch_recipes(tmp_path):
    bad = {**CFG, "model": {"name": "cnn1d"}}
    with pytest.raises(UserError, match="model.name 'hf'"):
        run(load_config(_write(tmp_path, bad)), tmp_path / "a")
    no_steps = {**CFG, "finetune": {"batch_size": 16}}
    with pytest.raises(UserError, match="set max_steps"):
        run(load_config(_write(tmp_path, no_steps)), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written on bad input


def test_lm_run_refuses_an_unreachable_level_before_training(tmp_path):
    cfg = {**CFG, "prune": {**CFG["prune"], "levels": [0.3, 0.97]}}
    with pytest.raises(ValueError, match="cannot be reached"):
        run(load_config(_write(tmp_path, cfg)), tmp_path / "c")
    assert not (tmp_path / "c" / "dense").exists()
