"""Tracing the patterns of prunekit.testing.patterns (issue 12 item 3): the unit structure of their
groups (tests/test_coverage_matrix.py checks that each prunes exactly and reloads)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups
from prunekit.testing.patterns import PATTERNS


def _groups(name: str):
    model, x = PATTERNS[name]()
    return model, x, {g.name: g for g in find_groups(model, x)}


def _index(group, param: str, dim: int):
    (s,) = [s for s in group.slices if (s.param, s.dim) == (param, dim)]
    return s.index


def test_every_output_is_traced_and_a_block_used_twice_keeps_both_inputs():
    _, _, groups = _groups("split_outputs")
    g = groups["trunk.2.0:out"]
    assert g.num_units == 8 + 16  # the two halves read by one block are one unit per channel
    rows = _index(g, "trunk.2.0.weight", 0)
    assert rows[0] == (0, 8) and rows[8] == (16,)
    assert _index(g, "shared.0.weight", 1)[0] == (0,)
    _, _, dict_groups = _groups("dict_outputs")  # the second output's head reads both hidden layers
    assert _index(dict_groups["fc1:out"], "head_b.weight", 1)[3] == (3,)
    assert _index(dict_groups["fc2:out"], "head_b.weight", 1)[3] == (16 + 3,)


def test_a_linear_reshaped_into_channels_forms_whole_channel_units():
    _, _, groups = _groups("reshape_channels")
    g = groups["fc:out"]
    assert g.num_units == 8
    assert _index(g, "fc.weight", 0)[2] == tuple(range(32, 48))
    assert _index(g, "up1.weight", 0)[2] == (2,)  # a transposed conv's input channels are dim 0


@pytest.mark.parametrize("name", ["lstm_2layer", "gru_2layer", "rnn_2layer"])
def test_recurrent_hidden_units_span_every_gate_and_layer(name):
    model, x, groups = _groups(name)
    g = groups["rnn:out"]
    gates = {"lstm_2layer": 4, "gru_2layer": 3, "rnn_2layer": 1}[name]
    assert g.num_units == 8
    assert _index(g, "rnn.weight_ih_l0", 0)[5] == tuple(5 + 8 * k for k in range(gates))
    assert _index(g, "rnn.weight_hh_l1", 1)[5] == (5,)
    assert _index(g, "rnn.weight_ih_l1", 1)[5] == (5,)  # the next layer reads it
    assert _index(g, "head.weight", 1)[5] == (5,)
    assert _index(groups["embed:out"], "rnn.weight_ih_l0", 1)[4] == (4,)
    plan = Plan(keep={g.name: [0, 2, 3, 7]}, num_units={g.name: 8})
    apply_plan_(model, plan, x, groups=list(groups.values()))
    assert model.rnn.hidden_size == 4 and model.rnn.weight_hh_l1.shape == (4 * gates, 4)


def test_a_bidirectional_lstm_is_refused_in_one_line_naming_the_ignore_pattern():
    class BiLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.rnn = nn.Linear(6, 10), nn.LSTM(10, 8, batch_first=True, bidirectional=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.rnn(torch.relu(self.embed(x)))[0][:, -1])

    model, x = BiLSTM(), torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match=r"couples to rnn \(LSTM bidirectional.*add 'rnn' to ignore") as err:
        find_groups(model, x)
    assert "\n" not in str(err.value)
    assert [g.name for g in find_groups(model, x, ignore=["rnn"])] == ["embed:out"]


def test_a_grouped_conv_loses_whole_groups_and_keeps_them_equal():
    model, x, groups = _groups("resnext")
    g = groups["reduce.0.0:out"]
    assert g.num_units == 4  # the 4 groups of the 3x3 conv
    assert _index(g, "reduce.0.0.weight", 0)[1] == (4, 5, 6, 7)
    assert _index(g, "grouped.0.0.weight", 0)[1] == (4, 5, 6, 7)  # its outputs go with its inputs
    assert _index(g, "expand.0.weight", 1)[1] == (4, 5, 6, 7)
    assert all((s.param, s.dim) != ("grouped.0.0.weight", 1) for s in g.slices)  # a group keeps its width
    pruned = copy.deepcopy(model)
    apply_plan_(
        pruned, Plan(keep={g.name: [0, 2, 3]}, num_units={g.name: 4}), x, groups=list(groups.values())
    )
    conv = pruned.grouped[0][0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (3, 12, 12)


def test_plain_torch_attention_is_refused_in_one_line_and_the_rest_prunes_exactly():
    from prunekit.testing.reference import zero_masked

    model, x = PATTERNS["plain_attention"]()
    with pytest.raises(
        ValueError, match=r"^group qkv:out couples to qkv \(its output features are reshaped.*add 'qkv'"
    ):
        find_groups(model, x)
    groups = find_groups(model, x, ignore=["qkv"])
    assert [g.name for g in groups] == ["embed:out", "fc1:out"]
    stream = Plan(keep={"embed:out": list(range(16))}, num_units={"embed:out": 32})
    with pytest.raises(
        RuntimeError, match="the model was restored"
    ):  # its forward derives heads from the width
        apply_plan_(model, stream, x, groups=groups)
    groups = [g for g in groups if g.name == "fc1:out"]
    keep = {g.name: list(range(0, g.num_units, 2)) for g in groups}
    with torch.no_grad():
        reference = zero_masked(model, groups, keep)(x)
        apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
        assert torch.allclose(model(x), reference, atol=1e-6, rtol=1e-5)


def test_multihead_attention_refuses_the_stream_and_its_heads_and_ffn_prune():
    model, x = PATTERNS["torch_transformer"]()
    with pytest.raises(
        ValueError, match=r"couples to layer.self_attn \(MultiheadAttention: its embed_dim.*add 'embed'"
    ):
        find_groups(model, x)
    heads, ffn = find_groups(model, x, ignore=["embed"])  # the heads: tests/test_mha.py
    assert (heads.name, heads.num_units) == ("layer.self_attn:heads", 4)
    assert (ffn.name, ffn.num_units) == ("layer.linear1:out", 48)


def test_the_trace_gives_back_a_forward_set_on_the_instance():
    model, x = PATTERNS["torch_transformer"]()
    attn = model.layer.self_attn
    wrapped = attn.forward  # e.g. a user's logging wrapper, set on the instance
    attn.forward = lambda *args, **kwargs: wrapped(*args, **kwargs)
    mine = attn.forward
    find_groups(model, x, ignore=["embed"])
    assert attn.__dict__["forward"] is mine
