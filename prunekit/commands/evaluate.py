"""``prunekit evaluate CHECKPOINT``: accuracy, params, MACs and latency on its config's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.commands.checkpoint import config_for_checkpoint
from prunekit.pipeline import setup_logging
from prunekit.task import Task


def evaluate_checkpoint(
    checkpoint: str | Path, config_path: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Accuracy / params / MACs / latency of a checkpoint on its config's test split."""
    from prunekit.train import make_accelerator

    cfg = config_for_checkpoint(checkpoint, config_path, overrides)
    setup_logging(None, True)
    task = Task(cfg)
    model = task.build_dense()  # loads cfg.model.checkpoint
    result = task.measure(model, make_accelerator())
    result["checkpoint"] = str(checkpoint)
    return result
