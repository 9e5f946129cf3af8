"""Non-HF model patterns that tracing must handle, each a tiny seeded builder ``(model, example_inputs)``.

The patterns are the ones torch-pruning's own tests exercise and that a trace can get wrong: several
outputs (a tuple, a dict), a Linear whose output is reshaped into channels, recurrent layers, grouped
convolutions (ResNeXt), concatenation and splitting along channels, transposed convolutions. BatchNorm
parameters and statistics are randomised, so that an entry given to the wrong channel cannot hide.
``PATTERNS[name](seed=0)`` builds one; :func:`pattern_factory` gives a registry factory, so that
checkpoints of a pattern save and load like any other model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm parameters and statistics and LayerNorm parameters drawn at random (a prune that
    puts a unit in the wrong place then shows; at their init they would hide it)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(0.4 * torch.rand(m.bias.shape, generator=g) - 0.2)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def _bn_conv(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout))


class SplitOutputs(nn.Module):
    """A trunk whose channels are split in three; two parts share a block; all three are returned."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.trunk = nn.Sequential(_bn_conv(dim, dim), nn.GELU(), _bn_conv(dim, 4 * dim))
        self.shared = _bn_conv(dim, dim)
        self.last = _bn_conv(2 * dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.trunk(x)
        a, b, c = torch.split(x, [self.shared[0].in_channels] * 2 + [self.last[0].in_channels], dim=1)
        return self.shared(a), self.shared(b), self.last(c)


class DictOutputs(nn.Module):
    """A shared trunk with two heads returned in a dict; the second head reads a hidden layer too."""

    def __init__(self, features: int = 12, hidden: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(features, hidden), nn.Linear(hidden, hidden)
        self.head_a, self.head_b = nn.Linear(hidden, 3), nn.Linear(2 * hidden, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h1 = torch.relu(self.fc1(x))
        h2 = torch.relu(self.fc2(h1))
        return {"a": self.head_a(h2), "b": self.head_b(torch.cat([h1, h2], dim=1))}


class ReshapeToChannels(nn.Module):
    """A Linear reshaped into 8 channels of 4x4, decoded by transposed convolutions (torch-pruning's
    test_reshape): one channel is 16 consecutive Linear outputs."""

    def __init__(self, features: int = 16, channels: int = 8):
        super().__init__()
        self.fc = nn.Linear(features, channels * 16)
        self.up1 = nn.ConvTranspose2d(channels, 6, kernel_size=4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(6, 4, kernel_size=4, stride=2, padding=1)
        self.out = nn.Linear(4 * 16 * 16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc(x)).view(x.shape[0], self.up1.in_channels, 4, 4)
        x = torch.relu(self.up2(torch.relu(self.up1(x))))
        return self.out(torch.flatten(x, 1))


class Recurrent(nn.Module):
    """Linear -> LSTM / GRU / RNN (1 or 2 layers) -> the last step's output -> Linear."""

    def __init__(self, cell: str = "lstm", layers: int = 1, features: int = 6, hidden: int = 8):
        super().__init__()
        self.embed = nn.Linear(features, 10)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(10, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.rnn(torch.relu(self.embed(x)))[0]
        return self.head(out[:, -1])


class ResNeXtBlock(nn.Module):
    """Stem, then a bottleneck whose 3x3 conv has 4 groups of 4 channels, a residual add, pool, fc."""

    def __init__(self, width: int = 16, groups: int = 4, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(_bn_conv(3, width, 3), nn.ReLU())
        self.reduce = nn.Sequential(_bn_conv(width, width), nn.ReLU())
        self.grouped = nn.Sequential(_bn_conv(width, width, 3, groups=groups), nn.ReLU())
        self.expand = _bn_conv(width, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(x.mean((2, 3)))


class ConcatSplit(nn.Module):
    """Two branches concatenated along channels, then chunked in two and summed crosswise."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(_bn_conv(3, 8, 3), nn.ReLU())
        self.left, self.right = _bn_conv(8, 6), _bn_conv(8, 10)
        self.mix = nn.Sequential(_bn_conv(16, 12, 3), nn.ReLU())
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.mix(torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1))
        a, b = torch.chunk(x, 2, dim=1)
        return self.fc((a * b).mean((2, 3)))


class TransposedConv(nn.Module):
    """Conv -> BN -> transposed conv (stride 2) -> BN -> conv -> pooled fc (a decoder step)."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.down = nn.Sequential(_bn_conv(3, 8, 3), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU())
        self.refine = nn.Sequential(_bn_conv(6, 6, 3), nn.ReLU())
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.refine(self.up(self.down(x))).mean((2, 3)))


class PlainAttention(nn.Module):
    """Tokens -> Linear -> self-attention written in plain torch (qkv viewed as heads) -> MLP -> mean
    -> Linear: prunekit refuses the qkv group in one line (its neurons are not independent) and prunes
    the rest with that group ignored."""

    def __init__(self, features: int = 12, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.embed, self.qkv, self.proj = (
            nn.Linear(features, dim),
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
        )
        self.fc1, self.fc2, self.head = nn.Linear(dim, 48), nn.Linear(48, dim), nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) / (c // self.heads) ** 0.5).softmax(-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


class TorchTransformer(nn.Module):
    """Tokens -> Linear -> nn.TransformerEncoderLayer -> mean -> Linear: its heads (structure/mha.py)
    and FFN are cut; the stream (the attention's embed_dim) is refused, so the case ignores 'embed'."""

    def __init__(self, features: int = 12, dim: int = 32):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 4, 48, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(self.embed(x)).mean(1))


class TorchDecoder(nn.Module):
    """Tokens -> nn.TransformerDecoderLayer -> mean -> Linear: causal self-attention over the first 3
    tokens (one Linear: the target stream) and cross-attention from them to all 5 tokens (another
    Linear: the memory), both nn.MultiheadAttention. Heads of both and the FFN are cut; both streams
    are an attention's embed_dim and refused, so the case ignores 'embed' and 'memory'."""

    def __init__(self, features: int = 12, dim: int = 32):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.memory = nn.Linear(features, dim)
        self.layer = nn.TransformerDecoderLayer(dim, 4, 48, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(3, device=x.device)
        out = self.layer(self.embed(x[:, :3]), self.memory(x), tgt_mask=causal, tgt_is_causal=True)
        return self.head(out.mean(1))


class GroupedTransposed(nn.Module):
    """A conv feeding a grouped transposed conv, which prunekit refuses (a grouped conv loses whole
    groups; its transposed twin is not supported): the error paths of find_groups and apply_plan_."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.grouped(torch.relu(self.stem(x))).mean((2, 3)))


def _images(seed: int, channels: int = 3, size: int = 8) -> Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _vectors(seed: int, *shape: int) -> Tensor:
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))


def _make(cls: type[nn.Module], seed: int, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_norms(cls(**kwargs), seed)


# name -> (class, constructor kwargs, example-input maker)
_SPECS: dict[str, tuple[type[nn.Module], dict, Callable[[int], Tensor]]] = {
    "split_outputs": (SplitOutputs, {}, lambda s: _images(s, 8, 5)),
    "dict_outputs": (DictOutputs, {}, lambda s: _vectors(s, 12)),
    "reshape_channels": (ReshapeToChannels, {}, lambda s: _vectors(s, 16)),
    "lstm": (Recurrent, {"cell": "lstm"}, lambda s: _vectors(s, 5, 6)),
    "lstm_2layer": (Recurrent, {"cell": "lstm", "layers": 2}, lambda s: _vectors(s, 5, 6)),
    "gru": (Recurrent, {"cell": "gru"}, lambda s: _vectors(s, 5, 6)),
    "gru_2layer": (Recurrent, {"cell": "gru", "layers": 2}, lambda s: _vectors(s, 5, 6)),
    "rnn_2layer": (Recurrent, {"cell": "rnn", "layers": 2}, lambda s: _vectors(s, 5, 6)),
    "resnext": (ResNeXtBlock, {}, _images),
    "concat_split": (ConcatSplit, {}, _images),
    "transposed_conv": (TransposedConv, {}, _images),
    "grouped_transposed": (GroupedTransposed, {}, _images),  # refused in one line
    "plain_attention": (PlainAttention, {}, lambda s: _vectors(s, 5, 12)),  # qkv refused in one line
    "torch_transformer": (TorchTransformer, {}, lambda s: _vectors(s, 5, 12)),  # stream refused
    "torch_decoder": (TorchDecoder, {}, lambda s: _vectors(s, 5, 12)),  # both streams refused
}


def _builder(name: str) -> Callable[..., tuple[nn.Module, Tensor]]:
    cls, kwargs, inputs = _SPECS[name]

    def build(seed: int = 0) -> tuple[nn.Module, Tensor]:
        return _make(cls, seed, **kwargs), inputs(seed)

    build.__name__ = name
    return build


PATTERNS: dict[str, Callable[..., tuple[nn.Module, Tensor]]] = {n: _builder(n) for n in _SPECS}


def pattern_factory(name: str) -> Callable[..., nn.Module]:
    """A registry factory for pattern ``name`` (``register_model(f"pattern_{name}", pattern_factory(name))``):
    it ignores ``num_classes`` / ``input_shape`` (a pattern has fixed shapes) and builds under the
    registry's seed, so that ``prunekit.load`` rebuilds the same architecture."""
    cls, kwargs, _ = _SPECS[name]

    def factory(num_classes: int, input_shape: tuple) -> nn.Module:
        return _randomise_norms(cls(**kwargs), 0)

    return factory
