"""Named optimizers and learning-rate schedules, built from a :class:`~prunekit.config.TrainConfig`.

The optimizer is always built from the model's *current* trainable parameters: pruning replaces
``nn.Parameter`` objects, so an optimizer built before a prune would update tensors the model no
longer uses.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from prunekit.config import TrainConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter with ``requires_grad``, in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters of ``model`` in two optimizer groups: decayed and not.

    Weight decay goes to matrices and conv kernels only (ndim >= 2), not to biases and norm scales,
    as in nanoGPT: decaying a BatchNorm/LayerNorm scale towards 0 fights the normalisation.
    """
    named = trainable_parameters(model)
    if not named:
        raise ValueError(
            "the model has no trainable parameters (all have requires_grad=False): unfreeze some to fine-tune"
        )
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh optimizer over the trainable parameters of ``model`` (:func:`decay_groups`)."""
    groups = decay_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"optimizer {cfg.optimizer!r} is not one of {OPTIMIZERS}: pick one of them")


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return int(round(cfg.warmup_fraction * total_steps))


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Linear warmup over ``warmup_fraction`` of the steps (from lr/warmup to lr), then constant, cosine
    to 0, or linear to 0 over the remaining steps.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule {cfg.schedule!r} is not one of {SCHEDULES}: pick one of them")
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(1, total_steps - warm)
    progress = min(1.0, (step - warm) / decay_steps)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr * (1.0 - progress)
