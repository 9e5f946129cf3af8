"""Verification stage: fine-tuning and evaluation on HF accelerate (one process, or DDP over processes).

``make_accelerator`` builds the Accelerator and refuses launches that silently lose processes;
``finetune`` rebuilds the optimizer and DDP wrapper from the model's current parameters on every call
(pruning replaces them); ``evaluate`` gathers loss and accuracy over all processes.
"""

from prunekit.train.accel import (
    LaunchError,
    check_launch,
    make_accelerator,
    requested_processes,
    resolve_mixed_precision,
)
from prunekit.train.loop import TrainingDiverged, evaluate, finetune, total_optimizer_steps
from prunekit.train.optim import build_optimizer, lr_at, trainable_parameters

__all__ = [
    "LaunchError",
    "TrainingDiverged",
    "build_optimizer",
    "check_launch",
    "evaluate",
    "finetune",
    "lr_at",
    "make_accelerator",
    "requested_processes",
    "resolve_mixed_precision",
    "total_optimizer_steps",
    "trainable_parameters",
]
