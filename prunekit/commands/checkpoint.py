"""How a checkpoint finds its run config (shared by ``prunekit evaluate`` and ``prunekit estimate``)."""

from __future__ import annotations

from pathlib import Path

from prunekit.config import RunConfig, load_config
from prunekit.errors import UserError


def config_for_checkpoint(
    checkpoint: str | Path, config_path: str | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """The run config a checkpoint belongs to (its run folder's config.json, or ``config_path``),
    with ``model.checkpoint`` pointing at it."""
    import json

    from prunekit.config import apply_overrides, config_from_dict
    from prunekit.pruning.checkpoint import read_meta

    folder = Path(checkpoint)
    read_meta(folder)
    saved = folder.parent / "config.json"
    if config_path is not None:
        cfg = load_config(config_path, overrides or [])
    elif saved.is_file():
        raw = apply_overrides(json.loads(saved.read_text()), overrides or [], str(saved))
        cfg = config_from_dict(raw, str(saved))
    else:
        raise UserError(f"no config found for '{folder}': pass --config CONFIG (the one that made it)")
    cfg.model.checkpoint = str(folder)
    return cfg
