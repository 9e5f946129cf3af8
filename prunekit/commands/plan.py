"""``prunekit plan CONFIG``: the plan of every level for the config's dense model; changes nothing.

It reuses the pipeline's :class:`~prunekit.task.Task`, so data, model and plans are built exactly as
``prunekit run`` builds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.config import RunConfig
from prunekit.pipeline import output_folder, setup_logging
from prunekit.task import Task, make_level_plan


def plan_only(cfg: RunConfig, output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The plan of every level for the dense model of ``cfg`` (trained if needed, never saved)."""
    from prunekit.train import make_accelerator

    from prunekit.planner import from_prune_config

    from_prune_config(cfg.prune, cfg.seed)  # a bad planner or option fails before data or training
    setup_logging(None, True)
    accelerator = make_accelerator()
    task = Task(cfg)
    folder = output_folder(cfg, output_dir)
    if (folder / "dense" / "prunekit.json").is_file():
        from prunekit.pruning.checkpoint import load

        model, _ = load(folder / "dense", trust_remote_code=cfg.model.trust_remote_code)
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
