"""LoRA recovery through peft on a pruned tiny LLaMA trained on the offline tweets: it lowers validation
perplexity, the merged model computes what the adapter model computed, the level checkpoint written by
`prunekit run` holds plain pruned weights that `prunekit.load` rebuilds, and bad LoRA options fail first."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from prunekit.config import ConfigError, config_from_dict, load_config
from prunekit.errors import UserError
from prunekit.metrics.perplexity import perplexity
from prunekit.models.causal_lm import tiny_llama
from prunekit.pipeline import run
from prunekit.planner import Target, make_plan, planner_config
from prunekit.pruning import apply_plan_, load
from prunekit.structure import find_groups
from prunekit.train.lm import LMTrainConfig, train_lm
from prunekit.train.lora import LoRASpec, add_lora, merge_lora, train_lm_lora

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from test_lm_pipeline import CFG  # noqa: E402
from train_tiny_llama import lm_data, read_config  # noqa: E402


@pytest.fixture(scope="module")
def pruned():
    """configs/tiny_llama_test.yaml's model trained 60 steps (validation perplexity 178.7), then half its
    params pruned at random units (196.2): a damage recovery has to repair (an l2 prune of this
    undertrained model barely hurts it: 182.3)."""
    cfg = read_config("configs/tiny_llama_test.yaml")
    data = lm_data(cfg)
    tok = data.tokenizer
    model = tiny_llama(
        len(tok), seed=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **cfg["model"]
    )
    train_lm(model, data.train, LMTrainConfig(**cfg["train"]), seed=0, log=lambda s: None)
    example = data.example_inputs(1)
    groups = find_groups(model, example)
    plan = make_plan(
        model,
        groups,
        Target("params", 0.5),
        planner_config("uniform", importance="random", seed=0),
        None,
        example,
    )
    apply_plan_(model, plan, example, groups)
    return model, data


def _val_ppl(model, data):
    return perplexity(model, data.validation.subset(torch.arange(128).numpy()).batches(64))["perplexity"]


def test_lora_recovery_lowers_validation_perplexity_and_leaves_plain_weights(pruned):
    model, data = copy.deepcopy(pruned[0]), pruned[1]
    shapes = {n: p.shape for n, p in model.named_parameters()}
    before = _val_ppl(model, data)
    recipe = LMTrainConfig(steps=40, batch_size=16, lr=1e-2, warmup_steps=5)
    hist = train_lm_lora(model, data.train, recipe, LoRASpec(r=8, alpha=16), seed=0, log=lambda s: None)
    after = _val_ppl(model, data)
    assert after < 0.95 * before, (before, after)  # measured: 196.2 -> 173.3
    assert {n: p.shape for n, p in model.named_parameters()} == shapes  # same pruned widths, no adapters
    assert all(p.requires_grad for p in model.parameters())  # peft's freezing undone
    assert 0 < hist["lora_trainable_params"] < 0.2 * sum(p.numel() for p in model.parameters())


def test_merged_model_equals_the_adapter_model(pruned):
    model, data = copy.deepcopy(pruned[0]), pruned[1]
    wrapped, frozen = add_lora(
        model, LoRASpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    assert {n for n, p in wrapped.named_parameters() if p.requires_grad} == {
        n for n, _ in wrapped.named_parameters() if "lora_" in n
    }
    recipe = LMTrainConfig(steps=10, batch_size=16, lr=1e-2, warmup_steps=2)
    train_lm(wrapped, data.train, recipe, seed=1, log=lambda s: None)  # adapters away from B = 0
    ids = torch.from_numpy(data.validation.input_ids[:4])
    with torch.no_grad():
        adapter_logits = wrapped(input_ids=ids).logits
        untouched = pruned[0](input_ids=ids).logits
    merged = merge_lora(wrapped, frozen)
    assert merged is model
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (adapter_logits - untouched).abs().max() > 1e-2  # the adapters did change the function
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)


def _write(tmp_path, cfg):
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lm_run_with_lora_recovery_saves_plain_pruned_weights(tmp_path):
    cfg = {
        **CFG,
        "prune": {**CFG["prune"], "levels": [0.5]},
        "finetune": {**CFG["finetune"], "lr": 1e-2},
        "recovery": {"method": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "up_proj"]}},
        "evaluate": {"latency_repeats": 1, "latency_warmup": 0},
    }
    out = tmp_path / "run"
    report = run(load_config(_write(tmp_path, cfg)), out)
    level = report["levels"][0]
    assert level["recovery_method"] == "lora" and level["recovery_steps"] == 5
    assert level["perplexity"] < level["perplexity_before_recovery"]
    with safe_open(out / "level-50" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k]
    model, _ = load(out / "level-50")
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    again, _ = load(out / "level-50")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_bad_lora_options_fail_before_any_work(tmp_path):
    bad = {**CFG, "recovery": {"method": "lora", "lora": {"target_modules": ["qkv"]}}}
    with pytest.raises(UserError, match=r"target_modules \['qkv'\] name no linear layer"):
        run(load_config(_write(tmp_path, bad)), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="unknown key 'recovery.lora.rank'"):
        config_from_dict({**CFG, "recovery": {"method": "lora", "lora": {"rank": 4}}})
    with pytest.raises(ConfigError, match="method lora is for the causal-LM task"):
        config_from_dict({"recovery": {"method": "lora"}})
    with pytest.raises(ConfigError, match="recovery.lora.target_modules"):
        config_from_dict({**CFG, "recovery": {"method": "lora", "lora": {"target_modules": "q_proj"}}})
    with pytest.raises(ValueError, match="lora r=0"):
        LoRASpec(r=0)
    with pytest.raises(ValueError, match="give a list of names"):
        LoRASpec(target_modules="q_proj")
