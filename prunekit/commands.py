"""What ``prunekit plan`` and ``prunekit evaluate`` do, and how a checkpoint finds its run config.

They reuse the pipeline's :class:`~prunekit.pipeline.Task`, so data, model and plans are built exactly
as ``prunekit run`` builds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.config import RunConfig, load_config
from prunekit.errors import UserError
from prunekit.pipeline import Task, make_level_plan, output_folder, setup_logging


def plan_only(cfg: RunConfig, output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The plan of every level for the dense model of ``cfg`` (trained if needed, never saved)."""
    from prunekit.train import make_accelerator

    setup_logging(None, True)
    accelerator = make_accelerator()
    task = Task(cfg)
    folder = output_folder(cfg, output_dir)
    if (folder / "dense" / "prunekit.json").is_file():
        from prunekit.pruning.checkpoint import load

        model, _ = load(folder / "dense")
    else:
        model = task.build_dense()
        if cfg.train.epochs > 0:
            task.train(model, cfg.train, accelerator, seed=cfg.seed, desc="dense")
    out = []
    for i, level in enumerate(cfg.prune.levels):
        plan, _ = make_level_plan(task, model, level, cfg.seed * 1000 + i + 1)
        out.append(
            {
                "level": level,
                "planner": plan.planner,
                "target": plan.target,
                "achieved": plan.extra.get("achieved"),
                "keep": {g: f"{len(k)}/{plan.num_units[g]}" for g, k in plan.keep.items()},
            }
        )
    return out


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
