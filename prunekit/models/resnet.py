"""CIFAR-style ResNets (He et al. 2016, section 4.2), in 2-D and 1-D.

Three stages of ``n`` BasicBlocks with ``16, 32, 64`` channels (times ``width``), strides 1, 2, 2, then
global average pooling and a linear head; depth = 6n + 2 (resnet20: n = 3, resnet56: n = 9). Shortcuts
are identities, except where the shape changes: there a 1x1 conv + BatchNorm (option B), which keeps
every channel prunable together with its block (no zero-padded identity to keep in sync).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from prunekit.models.cnn import check_input_shape


class BasicBlock(nn.Module):
    def __init__(self, dims: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self, dims: int, blocks_per_stage: int, in_channels: int, num_classes: int, width: float
    ) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv1 = conv(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = norm(widths[0])
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        ch = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(dims, ch, w, stride=2 if (i > 0 and j == 0) else 1))
                ch = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def _resnet(
    dims: int, n: int, name: str, num_classes: int, input_shape: tuple, width: float = 1.0
) -> nn.Module:
    """``width``: multiplier of the stage widths 16/32/64."""
    in_channels = check_input_shape(input_shape, dims, name)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(
            f"model.kwargs.width must be a positive number (a multiplier of 16/32/64), got {width!r}"
        )
    return CifarResNet(dims, n, in_channels, num_classes, float(width))


def _factory(dims: int, n: int, name: str) -> Callable[..., nn.Module]:
    def factory(num_classes: int, input_shape: tuple, width: float = 1.0) -> nn.Module:
        return _resnet(dims, n, name, num_classes, input_shape, width)

    factory.__name__ = name
    factory.__doc__ = (
        f"{name}: CIFAR-style ResNet-{6 * n + 2}, {dims}-D; ``width`` multiplies 16/32/64 channels."
    )
    return factory


resnet20 = _factory(2, 3, "resnet20")
resnet56 = _factory(2, 9, "resnet56")
resnet20_1d = _factory(1, 3, "resnet20_1d")
resnet56_1d = _factory(1, 9, "resnet56_1d")
__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet56", "resnet20_1d", "resnet56_1d"]
