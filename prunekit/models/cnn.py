"""Small plain CNNs: three conv + BatchNorm + ReLU layers, global average pooling, a linear head.

``simple_cnn`` is 2-D (images ``(C, H, W)``), ``cnn1d`` is 1-D (signals ``(C, L)``, e.g. MNIST-1D's
``(1, 40)``; the quickstart model). Channels are ``width, 2*width, 2*width``; the second and third
layers have stride 2, so the last feature map is a quarter of the input length per spatial dim.
"""

from __future__ import annotations

from torch import Tensor, nn


def _check_width(width: object) -> int:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"model.kwargs.width must be a positive integer, got {width!r}")
    return width


def check_input_shape(input_shape: tuple, dims: int, name: str) -> int:
    """The input channels of a ``dims``-D conv net's per-example ``input_shape``; ValueError otherwise."""
    if len(input_shape) != dims + 1:
        want = "(channels, length)" if dims == 1 else "(channels, height, width)"
        raise ValueError(f"model '{name}' needs inputs shaped {want}, got input_shape {tuple(input_shape)}")
    return int(input_shape[0])


class PlainCNN(nn.Module):
    def __init__(self, dims: int, in_channels: int, num_classes: int, width: int, kernel_size: int) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        chans = [in_channels, width, 2 * width, 2 * width]
        strides = [1, 2, 2]
        layers: list[nn.Module] = []
        for i, stride in enumerate(strides):
            layers += [
                conv(
                    chans[i], chans[i + 1], kernel_size, stride=stride, padding=kernel_size // 2, bias=False
                ),
                norm(chans[i + 1]),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = pool
        self.classifier = nn.Linear(chans[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def simple_cnn(num_classes: int, input_shape: tuple, width: int = 32) -> nn.Module:
    """2-D CNN; ``width`` = channels of the first conv (then 2x, 2x)."""
    return PlainCNN(2, check_input_shape(input_shape, 2, "simple_cnn"), num_classes, _check_width(width), 3)


def cnn1d(num_classes: int, input_shape: tuple, width: int = 56, kernel_size: int = 5) -> nn.Module:
    """1-D CNN for MNIST-1D-like signals; ``width`` = channels of the first conv (then 2x, 2x).

    At the default width: 96,050 params for (1, 40) inputs and 10 classes; 96.8 % MNIST-1D test accuracy
    after 4 epochs (AdamW, one-cycle lr 3e-3, batch 64; measured on CPU, seed 0).
    """
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"model.kwargs.kernel_size must be an odd positive integer, got {kernel_size!r}")
    return PlainCNN(
        1, check_input_shape(input_shape, 1, "cnn1d"), num_classes, _check_width(width), kernel_size
    )
