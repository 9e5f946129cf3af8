"""One MAC counter (prunekit/structure/macs.py): the planners' size prediction (``remaining_size``, no
surgery) and the measured ``count_macs`` of the pruned model are the same numbers, also on the models
where the two used to be separate counters that disagreed: windowed attention (Swin: the windows are
the batch of the attention call), ``nn.MultiheadAttention`` (whose projections run functionally) and
``nn.LSTM`` / ``GRU`` / ``RNN`` (whose weights run inside one fused kernel)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.metrics import count_macs, mac_breakdown
from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups, remaining_size
from prunekit.structure.macs import count_mac_terms
from prunekit.testing.hf_tiny import BUILDERS
from prunekit.testing.patterns import PATTERNS


class _Encoder(nn.Module):
    """A PyTorch transformer layer between two Linears: its FFN is prunable, its MHA is not."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x)).mean(1))


def _swin():
    return BUILDERS["swin"](seed=0)


def _encoder():
    return _Encoder().eval(), torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))


def _recurrent(name: str):
    def build():
        model, x = PATTERNS[name](seed=0)
        return model.eval(), x

    return build


_RECURRENT = ["lstm", "lstm_2layer", "gru_2layer", "rnn_2layer"]


def _deberta(share_att_key: bool):
    def build():
        model, x = BUILDERS["deberta_v2"](seed=0, share_att_key=share_att_key)
        return model.eval(), x

    return build


@pytest.mark.parametrize(
    "build",
    [_swin, _encoder, *map(_recurrent, _RECURRENT), _deberta(True), _deberta(False)],
    ids=["swin", "torch_mha", *_RECURRENT, "deberta_v2", "deberta_v2_pos"],
)
def test_predicted_macs_are_the_measured_macs_before_and_after_pruning(build):
    model, x = build()
    groups = find_groups(model, x, strict=False)
    assert groups
    assert remaining_size(model, groups, {}, x)[1] == count_macs(model, x)
    keep = {g.name: list(range(0, g.num_units, 2)) for g in groups}
    predicted_params, predicted_macs = remaining_size(model, groups, {k: len(v) for k, v in keep.items()}, x)
    dense_macs = count_macs(model, x)
    apply_plan_(model, Plan(keep=keep, num_units={g.name: g.num_units for g in groups}), x, groups=groups)
    assert predicted_macs == count_macs(model, x) < dense_macs
    assert predicted_params == sum(p.numel() for p in model.parameters())


def test_windowed_attention_counts_every_window():
    model, x = _swin()
    breakdown = mac_breakdown(model, x)
    # stage 1: 32 / 4 = 8 x 8 patches in windows of 4 x 4 = 4 windows of L = 16 tokens, width 16
    (key,) = [k for k in breakdown if k.endswith(":attention") and "layers.0.blocks.0." in k]
    assert breakdown[key] == 4 * 2 * 16 * 16 * 16


@pytest.mark.parametrize(("cell", "gates"), [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_macs_by_hand(cell, gates):
    # 2 layers, input 5, hidden 8, sequences of 7: every step applies W_ih and W_hh of each layer once
    rnn = getattr(nn, cell)(5, 8, num_layers=2, batch_first=True)
    per_step = gates * 8 * 5 + gates * 8 * 8 + gates * 8 * 8 + gates * 8 * 8
    assert count_macs(rnn, torch.randn(3, 7, 5)) == 7 * per_step
    # a packed batch counts its real steps only: lengths 7, 4, 2 -> 13 steps over 3 sequences
    assert sum(t.total for t in count_mac_terms(_Packed(rnn), torch.randn(3, 7, 5))) == 13 * per_step


class _Packed(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, [7, 4, 2], batch_first=True)
        return self.rnn(packed)[0].data


def test_deberta_counts_its_relative_position_scores():
    # c2p and p2c: each query scores 2 x span relative positions at the query width, besides Q K^T
    # and softmax(.) V over the L keys; the position table's projections are Linear calls of their own
    model, x = _deberta(True)()
    attn = model.deberta.encoder.layer[0].attention.self
    (b, length), width = x["input_ids"].shape, attn.num_attention_heads * attn.attention_head_size
    rows = min(2 * attn.pos_ebd_size, model.deberta.encoder.rel_embeddings.weight.shape[0])
    (term,) = [
        t for t in count_mac_terms(model, x) if t.module == "deberta.encoder.layer.0.attention.self:attention"
    ]
    assert term.total == b * length * (2 * length + 2 * rows) * width
