"""Tiny models for tests, built from code or from HF configs: no weights are downloaded.

Each model is deterministic given ``seed`` and carries ``input_shape`` (per example) or an HF config,
which :func:`example_inputs_for` reads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class _Block(nn.Module):
    """CIFAR-style basic block: two 3x3 convs with BatchNorm and a residual add."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 8, in_channels: int = 3, image: int = 12):
        super().__init__()
        self.input_shape = (in_channels, image, image)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_Block(width, width), _Block(width, width))
        self.layer2 = nn.Sequential(_Block(width, 2 * width, stride=2))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyMLP(nn.Module):
    def __init__(self, in_features: int = 20, hidden: int = 16, num_classes: int = 5):
        super().__init__()
        self.input_shape = (in_features,)
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class TinyMobile(nn.Module):
    """An inverted-residual block (1x1 expand, 3x3 depthwise, 1x1 project) added to its input."""

    def __init__(self, num_classes: int = 5, width: int = 8, image: int = 8):
        super().__init__()
        self.input_shape = (3, image, image)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.expand = nn.Sequential(nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width))
        self.depthwise = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width, bias=False),
            nn.BatchNorm2d(2 * width),
        )
        self.project = nn.Sequential(nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.relu6(self.stem(x))
        y = nn.functional.relu6(self.depthwise(nn.functional.relu6(self.expand(x))))
        x = x + self.project(y)
        return self.fc(x.mean((2, 3)))


class TinyGroupedConv(nn.Module):
    """A conv feeding a grouped conv (groups=2), which loses whole groups when pruned."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.grouped(torch.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_resnet(num_classes: int = 5, seed: int = 0) -> TinyResNet:
    """ResNet with BatchNorm, two stages, residual adds and a 1x1-conv shortcut; input (3, 12, 12)."""
    _seeded(seed)
    model = TinyResNet(num_classes)
    # non-trivial BatchNorm statistics, so that tests see them sliced
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def tiny_mobile(num_classes: int = 5, seed: int = 0) -> TinyMobile:
    """Stem + one inverted-residual block with a depthwise conv; input (3, 8, 8)."""
    _seeded(seed)
    return TinyMobile(num_classes).eval()


def tiny_grouped_conv(num_classes: int = 4, seed: int = 0) -> TinyGroupedConv:
    """Conv -> grouped conv -> linear; input (3, 8, 8). Its grouped conv is pruned by whole groups."""
    _seeded(seed)
    return TinyGroupedConv(num_classes).eval()


def tiny_mlp(num_classes: int = 5, seed: int = 0) -> TinyMLP:
    """20 -> 16 -> 16 -> classes with ReLU; input (20,)."""
    _seeded(seed)
    return TinyMLP(num_classes=num_classes).eval()


def _hf(config_cls: str, model_cls: str, seed: int, **fields: object) -> nn.Module:
    """An HF model from a config built of ``fields`` (eager attention), seeded, in eval mode."""
    import transformers

    _seeded(seed)
    cfg = getattr(transformers, config_cls)(attn_implementation="eager", **fields)
    return getattr(transformers, model_cls)(cfg).eval()


def tiny_bert(num_labels: int = 3, seed: int = 0, layers: int = 2) -> nn.Module:
    """BertForSequenceClassification: hidden 32, 4 heads of 8, FFN 64, vocab 100."""
    return _hf(
        "BertConfig",
        "BertForSequenceClassification",
        seed,
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )


def tiny_distilbert(num_labels: int = 3, seed: int = 0, layers: int = 2) -> nn.Module:
    """DistilBertForSequenceClassification: dim 32, 4 heads of 8, FFN 64, vocab 100."""
    return _hf(
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        seed,
        vocab_size=100,
        dim=32,
        n_layers=layers,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )


def tiny_vit(num_labels: int = 3, seed: int = 0, layers: int = 2) -> nn.Module:
    """ViTForImageClassification: image 16, patch 8, hidden 32, 4 heads, FFN 64."""
    return _hf(
        "ViTConfig",
        "ViTForImageClassification",
        seed,
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=num_labels,
    )


def tiny_llama_gqa(num_labels: int = 3, seed: int = 0, layers: int = 2) -> nn.Module:
    """LlamaForSequenceClassification with grouped-query attention: 8 query / 4 key-value heads of 8,
    hidden 64, FFN 96, vocab 100. ``pad_token_id`` = 0 so batches of several sequences work."""
    return _hf(
        "LlamaConfig",
        "LlamaForSequenceClassification",
        seed,
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )


def example_inputs_for(
    model: nn.Module, batch: int = 2, seq_len: int = 8, seed: int = 0, input_shape: tuple | None = None
) -> Tensor | Mapping[str, Tensor]:
    """Deterministic example inputs: a tensor of ``(batch, *input_shape)`` for plain models (from the
    argument or ``model.input_shape``), a dict for HF models (token ids or pixel values)."""
    g = torch.Generator().manual_seed(seed)
    config = getattr(model, "config", None)
    if input_shape is None and config is not None:
        if hasattr(config, "image_size"):
            size = config.image_size
            return {"pixel_values": torch.randn(batch, config.num_channels, size, size, generator=g)}
        ids = torch.randint(1, config.vocab_size, (batch, seq_len), generator=g)  # 0 is padding
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return inputs
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            f"cannot tell the input shape of {type(model).__name__}; pass input_shape=(C, H, W) or similar"
        )
    return torch.randn(batch, *shape, generator=g)
