"""One config's data, model factory and stage helpers: what every stage and command of a run shares.

A :class:`Task` loads the data once and builds, trains, measures and plans models exactly as
``prunekit run`` does, so ``prunekit plan``, ``estimate`` and ``evaluate`` see the same objects.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from prunekit.config import RunConfig
from prunekit.errors import UserError
from prunekit.structure.plan import Plan


def per_process_batch(batch_size: int, num_processes: int, section: str) -> int:
    """Each process's share of the global ``batch_size`` (one config trains alike on 1 and N
    processes); a :class:`UserError` when it does not divide."""
    if batch_size % num_processes:
        raise UserError(
            f"{section}.batch_size {batch_size} is the global batch and does not divide over "
            f"{num_processes} processes: make it a multiple of {num_processes}"
        )
    return batch_size // num_processes


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Task:
    """Data, model factory and helpers shared by every stage of one config."""

    def __init__(self, cfg: RunConfig):
        from prunekit.batch import take
        from prunekit.data import load_data
        from prunekit.models import describe, hf_path
        from prunekit.pruning.checkpoint import read_meta

        self.cfg = cfg
        # CPU kernels split their sums by thread: the count is part of the config, not the machine's.
        torch.set_num_threads(cfg.threads)
        # a text dataset is tokenized with data.tokenizer, else with the model's own files
        self.splits = load_data(cfg.data, seed=cfg.seed, tokenizer=cfg.model.path or hf_path(cfg.model))
        if self.splits.n_train == 0:
            raise UserError(f"dataset '{cfg.data.name}' has an empty train split: check data settings")
        # Checkpoints record the base architecture plus one plan relative to it. Starting from a
        # (possibly pruned) checkpoint, its base and plan carry over and later plans compose with it.
        self.base_plan: Plan | None = None
        if cfg.model.checkpoint:
            meta = read_meta(cfg.model.checkpoint)
            self.base = meta["base"]
            self.base_plan = Plan.from_dict(meta["plan"]) if meta.get("plan") else None
        else:
            self.base = describe(cfg.model, self.splits.num_classes, self.splits.input_shape)
        self.tokenizer_source = hf_path(cfg.model)  # HF files copied into checkpoints (None: not HF)
        # Real inputs (two training examples) for graph building, MAC counts and forward checks.
        self.example = take(self.loader("train", 2), 2)[0]
        lat_bs = cfg.evaluate.latency_batch_size
        self.latency_example = take(self.loader("train", lat_bs), lat_bs)[0]

    def plan_from_base(self, plan: Plan) -> Plan:
        """``plan`` (made for the dense model of this run) as a plan for the checkpoint's base model."""
        from prunekit.pruning import compose_plans

        return compose_plans(self.base_plan, plan) if self.base_plan is not None else plan

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0):
        return self.splits.loader(split, batch_size=batch_size, shuffle=shuffle, seed=seed)

    def build_dense(self) -> nn.Module:
        from prunekit.models import build_model
        from prunekit.pruning.checkpoint import load

        if self.cfg.model.checkpoint:
            # the run config (the user's own) decides about remote code, never the checkpoint
            model, _ = load(self.cfg.model.checkpoint, trust_remote_code=self.cfg.model.trust_remote_code)
            return model
        return build_model(
            self.cfg.model, self.splits.num_classes, self.splits.input_shape, seed=self.cfg.seed
        )

    def measure(self, model: nn.Module, accelerator) -> dict[str, Any]:
        """Test accuracy, params, MACs and CPU latency of ``model`` (the final evaluation)."""
        from prunekit.metrics import count_macs, count_params, measure_latency
        from prunekit.train import evaluate

        ev = evaluate(model, self.loader("test", self.cfg.data.batch_size), accelerator)
        e = self.cfg.evaluate
        lat = measure_latency(
            model,
            self.latency_example,
            repeats=e.latency_repeats,
            warmup=e.latency_warmup,
            threads=e.latency_threads,
        )
        return {
            "accuracy": ev["accuracy"],
            "loss": ev["loss"],
            "params": count_params(model),
            "macs": count_macs(model, self.example),  # per example
            "latency_ms": lat["median_ms"],
        }

    def predict(self, model: nn.Module, accelerator, seed: int) -> dict[str, Any]:
        """The theory estimates of ``model`` at its current weights (train split only)."""
        from prunekit.theory import estimate

        est = estimate(model, self.splits, self.cfg.estimate, accelerator=accelerator, seed=seed)
        keys = ("C_arch", "T_opt", "n", "d_eff", "bound", "hessian_top_eigenvalue")
        return {k: getattr(est, k) for k in keys} | {"seconds": round(sum(est.seconds.values()), 2)}

    def generalization(self, model: nn.Module, accelerator, test_accuracy: float) -> dict[str, float]:
        """Measured gap: train accuracy minus test accuracy (what the bound is meant to predict)."""
        from prunekit.train import evaluate

        train = evaluate(model, self.loader("train", self.cfg.data.batch_size), accelerator)
        return {"train_accuracy": train["accuracy"], "gap": train["accuracy"] - test_accuracy}

    def train(self, model: nn.Module, recipe, accelerator, seed: int, desc: str) -> dict[str, Any]:
        from prunekit.train import finetune, make_accelerator

        if recipe.mixed_precision != accelerator.mixed_precision:
            # Dense training and fine-tuning may use different precisions; switching keeps the process group.
            accelerator = make_accelerator(mixed_precision=recipe.mixed_precision, seed=None)

        from prunekit.train import TrainingDiverged

        section = "train" if recipe is self.cfg.train else "finetune"
        seed_everything(seed)
        batch = per_process_batch(recipe.batch_size, accelerator.num_processes, section)
        train_loader = self.loader("train", batch, shuffle=True, seed=seed)
        has_val = self.splits.size("validation") > 0
        val_loader = self.loader("validation", self.cfg.data.batch_size) if has_val else None
        try:
            return finetune(
                model, train_loader, recipe, accelerator, val_loader=val_loader, desc=desc, seed=seed
            )
        except TrainingDiverged as err:  # nothing of this stage is recorded: no result shows it
            raise UserError(
                f"{desc}: training diverged ({err.detail}): lower {section}.lr (now {recipe.lr:g}), "
                f"or set {section}.max_grad_norm, then rerun"
            ) from None


def make_level_plan(
    task: Task,
    model: nn.Module,
    level: float,
    seed: int,
    accelerator: Any = None,
    base_units: dict[str, int] | None = None,
    bounds: dict[str, tuple[int, int]] | None = None,
):
    """The plan for one level (groups → scores → allocation), at fixed weights; changes nothing.

    ``bounds``: group -> (fewest, most) units it may keep, on top of the configured limits (a
    schedule's intermediate step is held on the way to its destination, see :mod:`prunekit.schedule`).

    ``base_units``: each group's width in the run's dense model when ``model`` is already pruned (a
    schedule's later step, a chained level): the per-layer limits (``min_keep_fraction``, ``layers``)
    then stay fractions of the dense widths instead of compounding step after step.

    With several processes the plan is made once, on rank 0, and broadcast (as JSON) to the others, so
    that every rank applies the identical surgery even where planning is not bit-reproducible across
    ranks (a planner never sees the accelerator: its estimates are those of one process). A planning
    error on rank 0 is raised on every rank, so none waits for a plan that never comes."""
    from prunekit.structure import find_groups

    p = task.cfg.prune
    groups = find_groups(model, task.example, ignore=p.ignore, experts=p.experts)
    world = 1 if accelerator is None else int(accelerator.num_processes)
    if world == 1:
        return _plan(task, model, groups, level, seed, base_units, bounds), groups
    payload: dict[str, Any] = {}
    if accelerator.is_main_process:
        try:
            payload = {"plan": _plan(task, model, groups, level, seed, base_units, bounds).to_dict()}
        except Exception as err:  # re-raised below on every rank, after the others heard of it
            payload = {"error": str(err), "user": isinstance(err, (UserError, ValueError)), "exc": err}
    sent = _broadcast_json({k: v for k, v in payload.items() if k != "exc"}, accelerator)
    if "error" in sent:
        if "exc" in payload:
            raise payload["exc"]
        cls = UserError if sent["user"] else RuntimeError
        raise cls(f"planning failed on rank 0: {sent['error']}")
    import logging

    logging.getLogger("prunekit").info("plan made on rank 0 and broadcast to %d processes", world)
    return Plan.from_dict(sent["plan"]), groups


def _plan(
    task: Task,
    model: nn.Module,
    groups: Any,
    level: float,
    seed: int,
    base_units: dict[str, int] | None,
    bounds: dict[str, tuple[int, int]] | None = None,
) -> Plan:
    from prunekit.planner import Target, from_prune_config, make_plan

    p = task.cfg.prune
    config = from_prune_config(p, seed)
    if base_units:
        config = limits_of_the_base(config, groups, base_units)
    if bounds:
        config = with_unit_bounds(config, groups, bounds)
    loader = task.loader("train", task.cfg.finetune.batch_size, shuffle=True, seed=seed)
    batches = list(itertools.islice(loader, p.importance_batches))
    plan = make_plan(
        model,
        groups,
        Target(metric=p.metric, saved=level),
        config=config,
        batches=batches,
        example_inputs=task.example,
        data=task.splits,  # planners that estimate build their probe set from the train split
        latency_of=latency_of(task, model, groups) if p.metric == "latency" else None,
    )
    plan.extra["ignore"] = list(p.ignore)  # so that a checkpoint rebuild finds the same groups
    return plan


def with_unit_bounds(config: Any, groups: Any, bounds: dict[str, tuple[int, int]]) -> Any:
    """``config`` with one more rule per group named in ``bounds``: keep between (fewest, most) units."""
    import dataclasses

    from prunekit.planner import LayerLimit

    rules = [
        LayerLimit(
            g.name, min(1.0, bounds[g.name][0] / g.num_units), min(1.0, bounds[g.name][1] / g.num_units)
        )
        for g in groups
        if g.name in bounds
    ]
    return dataclasses.replace(config, layers=(*config.layers, *rules))


def limits_of_the_base(config: Any, groups: Any, base_units: dict[str, int]) -> Any:
    """``config`` with its per-layer keep limits rescaled from fractions of the dense widths
    (``base_units``) to fractions of the groups' current widths: one exact rule per group."""
    import dataclasses

    from prunekit.planner import LayerLimit

    rules = []
    for g in groups:
        scale = base_units.get(g.name, g.num_units) / g.num_units
        matching = [r for r in config.layers if r.matches(g.layer, g.name)]
        low = max([config.min_keep_fraction] + [r.min_keep for r in matching])
        high = min([1.0] + [r.max_keep for r in matching])
        rules.append(LayerLimit(g.name, min(1.0, low * scale), min(1.0, high * scale)))
    return dataclasses.replace(config, min_keep_fraction=0.0, layers=tuple(rules))


def _broadcast_json(obj: dict[str, Any], accelerator: Any) -> dict[str, Any]:
    """Rank 0's JSON-able ``obj`` on every rank (bytes in a tensor: no pickle between processes)."""
    import json

    from accelerate.utils import broadcast

    device = accelerator.device
    data = json.dumps(obj).encode() if accelerator.is_main_process else b""
    length = broadcast(torch.tensor([len(data)], dtype=torch.int64, device=device), from_process=0)
    buf = torch.zeros(int(length.item()), dtype=torch.uint8, device=device)
    if accelerator.is_main_process:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    buf = broadcast(buf, from_process=0)
    return json.loads(buf.cpu().numpy().tobytes().decode())


def latency_of(task: Task, model: nn.Module, groups: Any):
    """plan (None: ``model`` itself) -> latency stats of the pruned copy, as ``evaluate`` settings say."""
    import copy

    from prunekit.metrics import measure_latency
    from prunekit.pruning import apply_plan_

    e = task.cfg.evaluate

    def measure(plan: Plan | None) -> dict[str, Any]:
        m = model if plan is None else apply_plan_(copy.deepcopy(model), plan, task.example, groups=groups)
        return measure_latency(
            m, task.latency_example, e.latency_repeats, e.latency_warmup, e.latency_threads
        )

    return measure


def level_result(
    level: float,
    m: dict[str, Any],
    dense: dict[str, Any],
    accuracy_before_finetune: float,
    checkpoint: str,
    estimate: dict[str, Any] | None,
    plan: Any,
) -> dict[str, Any]:
    """The report entry of one pruned level from its measurements ``m`` against the dense model's."""
    fast = m["latency_ms"] > 0
    return {
        "target": level,
        "params": m["params"],
        "macs": m["macs"],
        "accuracy": m["accuracy"],
        "accuracy_before_finetune": accuracy_before_finetune,
        "params_saved": 1.0 - m["params"] / dense["params"],
        "macs_saved": 1.0 - m["macs"] / dense["macs"],
        "latency_ms": m["latency_ms"],
        "speedup": dense["latency_ms"] / m["latency_ms"] if fast else None,
        # 1.0 means latency fell exactly as much as MACs; small models on CPU are overhead-bound (< 1).
        "speedup_per_mac_reduction": (dense["latency_ms"] / m["latency_ms"]) / (dense["macs"] / m["macs"])
        if fast and m["macs"] > 0
        else None,
        "checkpoint": checkpoint,
        "predicted_gap": estimate["bound"] if estimate else plan.predicted_gap,
        "estimate": estimate,
        # a latency target: the plan's search, its target in ms and the measured spread (planner/latency.py)
        "latency_plan": plan.extra.get("latency"),
    }
