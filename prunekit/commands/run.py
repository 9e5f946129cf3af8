"""``prunekit run CONFIG``: dense model -> plan -> prune -> fine-tune -> evaluate -> report.

The work is :func:`prunekit.pipeline.run`; this module reads the config (with the ``--set``
overrides) first, so a bad key fails before any data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_command(
    config: str | Path,
    overrides: list[str] | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the whole pipeline for the YAML ``config``; returns the report dict."""
    from prunekit.config import load_config
    from prunekit.pipeline import run

    cfg = load_config(config, overrides or [])
    return run(cfg, output_dir=output, overwrite=overwrite)
