"""``prunekit evaluate CHECKPOINT``: accuracy, params, MACs and latency on its config's test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.commands.checkpoint import config_for_checkpoint
from prunekit.pipeline import setup_logging
from prunekit.task import Task


def evaluate_checkpoint(
    checkpoint: str | Path,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    trust_remote_code: bool = False,
    expected_sha256: str | None = None,
) -> dict[str, Any]:
    """Accuracy / params / MACs / latency of a checkpoint on its config's test split.

    ``expected_sha256`` (``--sha256``): the folder must be the one whose digest the publisher gave."""
    from prunekit.pruning.checkpoint import verify_checkpoint
    from prunekit.train import make_accelerator

    if expected_sha256 is not None:
        verify_checkpoint(checkpoint, expected_sha256)
    cfg = config_for_checkpoint(checkpoint, config_path, overrides, trust_remote_code=trust_remote_code)
    setup_logging(None, True)
    task = Task(cfg)
    model = task.build_dense()  # loads cfg.model.checkpoint
    result = task.measure(model, make_accelerator())
    result["checkpoint"] = str(checkpoint)
    return result
