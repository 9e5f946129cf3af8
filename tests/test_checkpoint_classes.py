"""Checkpoints rebuild the class and attention implementation they were saved with (issue 12 item 5):
any allow-listed AutoModelFor... head, eager or the default sdpa, reloads bit-identically."""

from __future__ import annotations

import pytest
import torch
from coverage_cases import outputs

from prunekit.pruning import load, save
from prunekit.pruning.checkpoint import read_meta

HEADS = [
    "AutoModelForMaskedLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModel",
]


def _bert(auto: str, attn: str):
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48
    )
    torch.manual_seed(0)
    return getattr(transformers, auto).from_config(cfg, attn_implementation=attn).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("auto", HEADS)
def test_load_rebuilds_the_saved_head_and_attention_bit_identically(tmp_path, auto, attn):
    model = _bert(auto, attn)
    x = {"input_ids": torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(0))}
    base = {"format": 1, "name": "hf", "kwargs": {}, "num_classes": 2, "input_shape": [7], "path": None,
            "trust_remote_code": False, "hf_config": model.config.to_dict()}  # fmt: skip
    save(model, tmp_path / "ckpt", None, None, base, x)
    recorded = read_meta(tmp_path / "ckpt")["base"]
    assert (recorded["hf_auto_class"], recorded["hf_class"]) == (auto, type(model).__name__)
    assert recorded["attn_implementation"] == attn
    loaded, _ = load(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.config._attn_implementation == attn
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, x), outputs(loaded, x), strict=True))
