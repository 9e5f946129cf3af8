"""``prunekit info CHECKPOINT``: what a checkpoint is (base model, plan, sizes, hashes); builds no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def info_command(checkpoint: str | Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """:func:`~prunekit.pruning.checkpoint.checkpoint_info` of ``checkpoint``.

    ``expected_sha256`` (``--sha256``): the folder must be the one whose digest the publisher gave,
    checked before anything of it is summarised."""
    from prunekit.pruning.checkpoint import checkpoint_info, verify_checkpoint

    if expected_sha256 is not None:
        verify_checkpoint(checkpoint, expected_sha256)
    return checkpoint_info(checkpoint)
