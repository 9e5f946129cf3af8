"""Real MNIST-1D data and a tiny 1-D CNN, shared by the training tests and the scripts they launch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def mnist1d_tensors(num_samples: int = 5000) -> dict[str, torch.Tensor]:
    """MNIST-1D from prunekit's cached local generator (never `get_dataset`, which downloads): 80 % train
    ``x`` / ``y``, 20 % test ``x_test`` / ``y_test``; inputs ``(N, 1, 40)`` float32, labels int64."""
    from prunekit.data.builtin import mnist1d_arrays

    d = mnist1d_arrays(num_samples)
    return {
        "x": torch.from_numpy(d["x"].astype(np.float32)).unsqueeze(1),
        "y": torch.from_numpy(d["y"].astype(np.int64)),
        "x_test": torch.from_numpy(d["x_test"].astype(np.float32)).unsqueeze(1),
        "y_test": torch.from_numpy(d["y_test"].astype(np.int64)),
    }


def save_tensors(data: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in data.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)


class TinyCNN1d(nn.Module):
    """Two convs and a linear head; ``norm=False`` for DDP-vs-one-process comparisons (BatchNorm
    statistics are per process under DDP, so they would differ from a single process by design)."""

    def __init__(self, width: int = 16, num_classes: int = 10, norm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width) if norm else nn.Identity()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.bn2 = nn.BatchNorm1d(width) if norm else nn.Identity()
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def shrink_conv2_(model: TinyCNN1d, keep: int) -> TinyCNN1d:
    """Simulate structured pruning in place: keep the first ``keep`` output channels of conv2.

    Like real pruning it swaps in NEW nn.Conv1d / nn.Linear modules (new nn.Parameter objects) holding
    slices of the old weights, so an optimizer built before the call would train orphaned tensors.
    """
    old_conv, old_fc = model.conv2, model.fc
    pool = old_fc.in_features // old_conv.out_channels
    conv = nn.Conv1d(
        old_conv.in_channels, keep, old_conv.kernel_size, stride=old_conv.stride, padding=old_conv.padding
    )
    fc = nn.Linear(keep * pool, old_fc.out_features)
    with torch.no_grad():
        conv.weight.copy_(old_conv.weight[:keep])
        conv.bias.copy_(old_conv.bias[:keep])
        # flatten(1) of (B, C, pool) puts channel c at columns c*pool .. c*pool+pool-1
        fc.weight.copy_(
            old_fc.weight.view(old_fc.out_features, -1, pool)[:, :keep].reshape(old_fc.out_features, -1)
        )
        fc.bias.copy_(old_fc.bias)
    model.conv2, model.fc = conv, fc
    if isinstance(model.bn2, nn.BatchNorm1d):
        bn = nn.BatchNorm1d(keep)
        with torch.no_grad():
            for name in ("weight", "bias"):
                getattr(bn, name).copy_(getattr(model.bn2, name)[:keep])
            bn.running_mean.copy_(model.bn2.running_mean[:keep])
            bn.running_var.copy_(model.bn2.running_var[:keep])
        model.bn2 = bn
    return model
