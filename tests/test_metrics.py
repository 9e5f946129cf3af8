"""Metrics: MACs equal hand-computed values (Conv2d/Conv1d/Linear with stride, padding, groups, bias;
Conv2d subclasses; attention), EfficientNet-Lite0's published size, and a well-formed latency record."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.config import ModelConfig
from prunekit.metrics import count_macs, count_params, mac_breakdown, measure_latency
from prunekit.models import build_model, example_inputs
from prunekit.testing.models import tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()  # tiny models on a shared machine: extra threads only spin
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class SamePadConv2d(nn.Conv2d):
    """A Conv2d subclass with its own forward (TF-style padding), like EfficientNet's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            F.pad(x, [1, 1, 1, 1]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


class Small(nn.Module):
    def __init__(self, subclass: bool = False) -> None:
        super().__init__()
        if subclass:
            self.c1 = SamePadConv2d(3, 8, 3, stride=2, padding=0, bias=True)
        else:
            self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.c3 = nn.Conv1d(8, 6, 5, stride=2, padding=2, groups=2, bias=False)
        self.fc = nn.Linear(6 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))  # (B, 8, 5, 5)
        x = self.c3(x.flatten(2))  # (B, 6, 13)
        return self.fc(x.flatten(1))


# Per example, input 3x9x9:
#   c1: 8 out ch x 5x5 outputs x (3 in ch x 3x3 kernel)     = 200 x 27 = 5400
#   c2: 8 x 5x5 outputs x (8/4 = 2 in ch per group x 3x3)   = 200 x 18 = 3600
#   c3: 6 x 13 outputs (floor((25 + 4 - 5) / 2) + 1) x (8/2 x 5) = 78 x 20 = 1560
#   fc: 10 outputs x 78 inputs                                           = 780
SMALL_MACS = {"c1": 5400, "c2": 3600, "c3": 1560, "fc": 780}


@pytest.mark.parametrize("subclass", [False, True], ids=["plain", "conv2d-subclass"])
def test_macs_match_hand_computed_values(subclass):
    model = Small(subclass).train()
    x = torch.randn(3, 3, 9, 9)
    assert mac_breakdown(model, x) == SMALL_MACS
    assert count_macs(model, x) == sum(SMALL_MACS.values()) == 11_340
    assert count_macs(model, x[:1]) == 11_340  # per example, whatever the batch size
    assert model.training  # mode restored


def test_macs_grow_with_a_wider_layer():
    # negative control: a change that adds work must show up in the count
    wide = Small()
    wide.c1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
    assert count_macs(wide, torch.randn(1, 3, 9, 9)) == 11_340 - 5400 + 200 * 75


def test_transposed_conv_counts_and_bad_inputs_are_value_errors():
    up = nn.Sequential(nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2), nn.Flatten(), nn.Linear(6 * 11, 2))
    # per example: 4 x 5 input elements x (6 / 2 out ch per group) x 3 taps = 180; output length
    # (5 - 1) x 2 + 3 = 11, so the Linear adds 2 x 66 = 132
    assert mac_breakdown(up, torch.randn(3, 4, 5)) == {"0": 180, "2": 132}
    with pytest.raises(ValueError, match="batch size 0"):
        count_macs(up, torch.randn(0, 4, 5))
    with pytest.raises(ValueError, match="tensor or a dict of tensors, got list"):
        mac_breakdown(up, [torch.randn(1, 4, 5)])
    with pytest.raises(ValueError, match="non-empty dict of tensors"):
        count_macs(up, {})


def test_multihead_attention_counts_projections_and_matmuls():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    # L = 5, E = 16: q/k/v/out projections 4 x 5 x 16 x 16 = 5120; QK^T and AV 2 x 5 x 5 x 16 = 800
    assert count_macs(Wrap(), torch.randn(2, 5, 16)) == 5120 + 800


def test_hf_bert_macs_include_attention_matmuls():
    model = tiny_bert(num_labels=3)  # hidden 32, 4 heads, FFN 64, 2 layers
    inputs = {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    # per layer, L = 8: q,k,v,o 4 x 8 x 32 x 32 = 32768; FFN 2 x 8 x 32 x 64 = 32768; attention 2 x 8 x 8 x 32
    per_layer = 32768 + 32768 + 2 * 8 * 8 * 32
    # the pooler (dense on the first token) 32 x 32 and the classifier 3 x 32
    assert count_macs(model, inputs) == 2 * per_layer + 32 * 32 + 3 * 32
    breakdown = mac_breakdown(model, inputs)
    assert breakdown["bert.encoder.layer.1.attention.self:attention"] == 4096
    assert not any(k.endswith("layer.1.attention:attention") for k in breakdown)  # counted once, innermost

    # two of four heads pruned in layer 0 (what head pruning leaves): the count follows the weights
    attn = model.bert.encoder.layer[0].attention
    for name in ("query", "key", "value"):
        setattr(attn.self, name, nn.Linear(32, 16))
    attn.self.num_attention_heads, attn.self.all_head_size = 2, 16
    attn.output.dense = nn.Linear(16, 32)
    pruned_layer = 3 * 8 * 32 * 16 + 8 * 16 * 32 + 32768 + 2 * 8 * 8 * 16
    assert count_macs(model, inputs) == pruned_layer + per_layer + 32 * 32 + 3 * 32


def test_efficientnet_lite0_macs_match_the_published_size():
    model = build_model(
        ModelConfig(name="efficientnet_lite0", kwargs={"pretrained": False}), 1000, (3, 224, 224)
    )
    macs = count_macs(model, example_inputs(model, (3, 224, 224), batch=1))
    assert abs(macs - 0.39e9) / 0.39e9 < 0.05, macs  # its convs are a Conv2d subclass: all must count


def test_count_params_total_and_trainable():
    model = Small()
    assert count_params(model) == (8 * 27 + 8) + 8 * 18 + 6 * 20 + (780 + 10)
    model.c1.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 8 * 18 + 6 * 20 + 790


def test_latency_record_is_well_formed_and_restores_state():
    model = build_model(ModelConfig(name="cnn1d"), 10, (1, 40)).train()
    torch.set_num_threads(1)
    result = measure_latency(model, example_inputs(model, (1, 40), batch=1), repeats=7, warmup=1, threads=2)
    keys = {"median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms", "spread", "repeats", "threads"}
    assert set(result) == keys
    assert result["repeats"] == 7 and result["threads"] == 2
    assert (
        0
        < result["p10_ms"]
        <= result["p25_ms"]
        <= result["median_ms"]
        <= result["p75_ms"]
        <= result["p90_ms"]
    )
    assert result["spread"] == (result["p75_ms"] - result["p25_ms"]) / result["median_ms"]
    assert torch.get_num_threads() == 1 and model.training
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        measure_latency(model, torch.zeros(1, 1, 40), repeats=0)
    with pytest.raises(ValueError, match="tensor or a dict of tensors, got ndarray"):
        measure_latency(model, torch.zeros(1, 1, 40).numpy())


def test_gpt2_conv1d_and_fused_attention_count():
    # transformers' Conv1D (weight (in, out)) and an attention module without a separate query projection
    # (fused c_attn): its width comes from num_heads x head_dim
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=50,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=16,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        attn_implementation="eager",
    )
    model = GPT2ForSequenceClassification(config)
    inputs = {"input_ids": torch.randint(2, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    L = 8  # noqa: N806 - the sequence length, as in the formulas
    # c_attn (16 -> 48), c_proj (16 -> 16), mlp (16 -> 64 -> 16), attention 2 L^2 16, score on every token
    expected = L * 16 * 48 + L * 16 * 16 + 2 * L * 16 * 64 + 2 * L * L * 16 + L * 16 * 3
    assert count_macs(model, inputs) == expected
