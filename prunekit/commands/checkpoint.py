"""How a checkpoint finds its run config (shared by ``prunekit evaluate`` and ``prunekit estimate``)."""

from __future__ import annotations

from pathlib import Path

from prunekit.config import RunConfig, load_config
from prunekit.errors import UserError


def config_for_checkpoint(
    checkpoint: str | Path,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    trust_remote_code: bool = False,
) -> RunConfig:
    """The run config a checkpoint belongs to (its run folder's config.json, or ``config_path``),
    with ``model.checkpoint`` pointing at it.

    The config.json next to a checkpoint came with the folder, like the checkpoint itself, so its
    ``model.trust_remote_code`` is not the user's word: the caller's ``trust_remote_code`` (the
    ``--trust-remote-code`` flag) replaces it. A config the user names with ``config_path`` is theirs."""
    import json

    from prunekit.config import apply_overrides, config_from_dict
    from prunekit.pruning.checkpoint import read_meta

    folder = Path(checkpoint)
    read_meta(folder)
    saved = folder.parent / "config.json"
    if config_path is not None:
        cfg = load_config(config_path, overrides or [])
    elif saved.is_file():
        try:
            saved_raw = json.loads(saved.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(
                f"'{saved}' is not a readable run config (corrupt JSON): pass --config CONFIG (the one that made it)"
            ) from None
        if not isinstance(saved_raw, dict):
            raise UserError(
                f"'{saved}' is not a run config mapping: pass --config CONFIG (the one that made it)"
            )
        raw = apply_overrides(saved_raw, overrides or [], str(saved))
        cfg = config_from_dict(raw, str(saved))
        cfg.model.trust_remote_code = trust_remote_code
    else:
        raise UserError(f"no config found for '{folder}': pass --config CONFIG (the one that made it)")
    cfg.model.checkpoint = str(folder)
    cfg.model.trust_remote_code = cfg.model.trust_remote_code or trust_remote_code
    return cfg
