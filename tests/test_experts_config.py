"""``prune.experts`` from a run config: a causal-LM run on a mixture-of-experts model prunes whole
experts (with their router rows) next to heads and neurons; the checkpoint rebuilds; on a model without
experts the key is one line before any work."""

import json

import torch
import yaml

from prunekit.cli import main
from prunekit.data.lm_text import train_tokenizer, tweet_texts
from prunekit.pruning import load


def _mixtral_folder(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = train_tokenizer(tweet_texts()[:3000], vocab_size=256)
    cfg = MixtralConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path / "mixtral"
    MixtralForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _config(tmp_path, model: dict, experts: bool):
    cfg = {
        "name": "moe",
        "seed": 0,
        "data": {"name": "lm_text", "path": "tweets", "max_length": 16, "batch_size": 64},
        "model": model,
        "train": {"max_steps": 2, "batch_size": 16, "lr": 1.0e-3},
        "finetune": {"max_steps": 2, "batch_size": 16, "lr": 1.0e-3},
        "prune": {"planner": "uniform", "levels": [0.4], "importance_batches": 1, "experts": experts},
        "evaluate": {"latency_repeats": 1, "latency_warmup": 0},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_run_config_prunes_whole_experts(tmp_path):
    folder = _mixtral_folder(tmp_path)
    out = tmp_path / "run"
    assert (
        main(["run", str(_config(tmp_path, {"name": "hf", "path": str(folder)}, True)), "--output", str(out)])
        == 0
    )
    model, _ = load(out / "level-40")
    plan = json.loads((out / "level-40" / "prunekit.json").read_text())["plan"]
    experts = {n: len(k) for n, k in plan["keep"].items() if n.endswith(":experts")}
    assert len(experts) == 2 and all(2 <= k < 4 for k in experts.values())  # top-2 kept at least
    for i, layer in enumerate(model.model.layers):
        assert layer.mlp.experts.num_experts == experts[f"model.layers.{i}.mlp.experts:experts"]
        assert layer.mlp.gate.weight.shape[0] == layer.mlp.experts.num_experts
    ids = torch.randint(0, 200, (1, 8), generator=torch.Generator().manual_seed(0))
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape == (1, 11)


def test_experts_on_a_model_without_experts_is_one_line_before_any_work(tmp_path, capsys):
    model = {"name": "tiny_llama", "kwargs": {"vocab_size": 256, "hidden_size": 32, "num_layers": 1}}
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path, model, True)), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no mixture-of-experts block" in err and "prune.experts" in err, err
    assert not (out / "dense").exists()
