"""The prune-and-finetune pipeline: dense model → (plan → prune → fine-tune → evaluate) per level → report.

Read top to bottom, :func:`run` is the whole job. Every result is written atomically and recorded in
``state.json`` before the next step starts, so the same command resumes a killed run. With several
accelerate processes every rank computes, and only the main process writes.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.config import RunConfig
from prunekit.errors import UserError
from prunekit.pruning.types import Plan
from prunekit.run_state import RunState

log = logging.getLogger("prunekit")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_logging(folder: Path | None, main: bool) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if not main:
        log.addHandler(logging.NullHandler())
        return
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("[prunekit] %(message)s"))
    log.addHandler(console)
    if folder is not None:
        file = logging.FileHandler(folder / "run.log")
        file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(file)
    log.propagate = False


def level_name(level: float) -> str:
    """``level-70`` for 0.70 saved; fractional percents keep their digits (``level-99.5``)."""
    return f"level-{round(level * 100, 2):g}"


class Task:
    """Data, model factory and helpers shared by every stage of one config."""

    def __init__(self, cfg: RunConfig):
        from prunekit.batch import take
        from prunekit.data import load_data
        from prunekit.models import describe, hf_path
        from prunekit.pruning.checkpoint import read_meta

        self.cfg = cfg
        self.splits = load_data(cfg.data, seed=cfg.seed, model_cfg=cfg.model)
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
            model, _ = load(self.cfg.model.checkpoint)
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

        seed_everything(seed)
        train_loader = self.loader("train", recipe.batch_size, shuffle=True, seed=seed)
        has_val = self.splits.size("validation") > 0
        val_loader = self.loader("validation", self.cfg.data.batch_size) if has_val else None
        return finetune(model, train_loader, recipe, accelerator, val_loader=val_loader, desc=desc, seed=seed)


def _dense_stage(task: Task, state: RunState, accelerator, model: nn.Module) -> dict[str, Any]:
    from prunekit.pruning.checkpoint import save

    cfg = task.cfg
    if state.is_done("dense"):
        log.info("dense: finished earlier, reusing %s", state.folder / "dense")
        return state.result("dense")
    t0 = time.perf_counter()
    history = {}
    if cfg.train.epochs > 0 or cfg.train.max_steps:
        log.info("dense: training %s for %s epochs", cfg.model.name, cfg.train.epochs)
        history = task.train(model, cfg.train, accelerator, seed=cfg.seed, desc="dense")
    metrics = task.measure(model, accelerator)
    if cfg.estimate.enabled:
        metrics["estimate"] = task.predict(model, accelerator, seed=cfg.seed)
        metrics["predicted_gap"] = metrics["estimate"]["bound"]
        metrics.update(task.generalization(model, accelerator, metrics["accuracy"]))
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    metrics["history"] = history
    if accelerator.is_main_process:
        save(
            model,
            state.folder / "dense",
            task.base_plan,
            metrics,
            task.base,
            task.example,
            tokenizer_source=task.tokenizer_source,
        )
        state.mark_done("dense", metrics)
    accelerator.wait_for_everyone()
    log.info(
        "dense: accuracy %.4f, %d params, %.3g MACs", metrics["accuracy"], metrics["params"], metrics["macs"]
    )
    return metrics


def make_level_plan(task: Task, model: nn.Module, level: float, seed: int):
    """The plan for one level (groups → scores → allocation), at fixed weights; changes nothing."""
    from prunekit.planner import Target, from_prune_config, make_plan
    from prunekit.pruning import find_groups

    p = task.cfg.prune
    groups = find_groups(model, task.example, ignore=p.ignore)
    loader = task.loader("train", task.cfg.finetune.batch_size, shuffle=True, seed=seed)
    batches = list(itertools.islice(loader, p.importance_batches))
    plan = make_plan(
        model,
        groups,
        Target(metric=p.metric, saved=level),
        config=from_prune_config(p, seed),
        batches=batches,
        example_inputs=task.example,
    )
    plan.extra["ignore"] = list(p.ignore)  # so that a checkpoint rebuild finds the same groups
    return plan, groups


def _level_stage(
    task: Task, state: RunState, accelerator, index: int, level: float, dense: dict[str, Any]
) -> dict[str, Any]:
    from prunekit.pruning import apply_plan_
    from prunekit.pruning.checkpoint import load, save
    from prunekit.train import evaluate

    name = level_name(level)
    if state.is_done(name):
        log.info("%s: finished earlier, reusing", name)
        return state.result(name)
    t0 = time.perf_counter()
    seed = task.cfg.seed * 1000 + index + 1
    seed_everything(seed)
    model, _ = load(state.folder / "dense")
    plan, groups = make_level_plan(task, model, level, seed)
    apply_plan_(model, plan, task.example, groups=groups)
    before = evaluate(model, task.loader("test", task.cfg.data.batch_size), accelerator)
    # The prediction is made here, at the pruned weights, before any fine-tuning compute is spent.
    estimate = task.predict(model, accelerator, seed=seed) if task.cfg.estimate.enabled else None
    log.info(
        "%s: pruned to %d params (accuracy before fine-tuning %.4f)",
        name,
        sum(p.numel() for p in model.parameters()),
        before["accuracy"],
    )
    history = task.train(model, task.cfg.finetune, accelerator, seed=seed, desc=name)
    m = task.measure(model, accelerator)
    result = {
        "target": level,
        "params": m["params"],
        "macs": m["macs"],
        "accuracy": m["accuracy"],
        "accuracy_before_finetune": before["accuracy"],
        "params_saved": 1.0 - m["params"] / dense["params"],
        "macs_saved": 1.0 - m["macs"] / dense["macs"],
        "latency_ms": m["latency_ms"],
        "speedup": dense["latency_ms"] / m["latency_ms"] if m["latency_ms"] > 0 else None,
        # 1.0 means latency fell exactly as much as MACs; small models on CPU are overhead-bound (< 1).
        "speedup_per_mac_reduction": (dense["latency_ms"] / m["latency_ms"]) / (dense["macs"] / m["macs"])
        if m["latency_ms"] > 0 and m["macs"] > 0
        else None,
        "checkpoint": name,
        "predicted_gap": estimate["bound"] if estimate else plan.predicted_gap,
        "estimate": estimate,
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
    }
    if estimate is not None:
        result.update(task.generalization(model, accelerator, m["accuracy"]))
    if accelerator.is_main_process:
        save(
            model,
            state.folder / name,
            task.plan_from_base(plan),
            {k: v for k, v in result.items() if k != "history"},
            task.base,
            task.example,
            tokenizer_source=task.tokenizer_source,
        )
        state.mark_done(name, result)
    accelerator.wait_for_everyone()
    log.info(
        "%s: %.1f %% params saved, accuracy %.4f", name, 100 * result["params_saved"], result["accuracy"]
    )
    return result


def output_folder(cfg: RunConfig, output_dir: str | Path | None) -> Path:
    return Path(output_dir or cfg.output_dir or Path("runs") / cfg.name)


def run(cfg: RunConfig, output_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole pipeline for ``cfg``; returns the report dict (also written to the folder)."""
    from prunekit.planner import from_prune_config, known_planners
    from prunekit.report import build_report, write_report
    from prunekit.train import make_accelerator

    t_start = time.perf_counter()
    if cfg.prune.planner not in known_planners():
        raise UserError(
            f"unknown planner '{cfg.prune.planner}' in prune.planner: choose one of {', '.join(known_planners())}"
        )
    from_prune_config(cfg.prune, cfg.seed)  # an unknown importance criterion or option fails here
    folder = output_folder(cfg, output_dir)
    accelerator = make_accelerator(mixed_precision=cfg.finetune.mixed_precision, grad_accum_steps=1)
    # Everything that can fail on bad input (data, model, folder ownership) is checked before the
    # folder is touched, so a bad config leaves an existing output folder as it was.
    state = RunState.open(folder, cfg.fingerprint(), cfg.model_dump(mode="json"), overwrite=overwrite)
    seed_everything(cfg.seed)
    task = Task(cfg)
    model = task.build_dense()  # before the folder is touched: a bad model path or kwarg fails here
    if not state.is_done(level_name(cfg.prune.levels[-1])):
        # The hardest level, planned on a copy of the untrained model: an unreachable target (layers
        # at their floors, embeddings never pruned) fails now, not after the dense training.
        make_level_plan(task, copy.deepcopy(model), cfg.prune.levels[-1], cfg.seed)
    if accelerator.is_main_process:
        state.start()
    accelerator.wait_for_everyone()
    setup_logging(folder, accelerator.is_main_process)
    log.info("run '%s' → %s (seed %d, %d process(es))", cfg.name, folder, cfg.seed, accelerator.num_processes)

    dense = _dense_stage(task, state, accelerator, model)
    levels = [_level_stage(task, state, accelerator, i, lv, dense) for i, lv in enumerate(cfg.prune.levels)]

    report = build_report(cfg, dense, levels)
    if accelerator.is_main_process:
        write_report(folder, report)
    accelerator.wait_for_everyone()
    best = max(levels, key=lambda r: r["params_saved"])
    log.info(
        "done in %.0f s: dense %.4f → %s %.4f at %.0f %% params saved; report: %s",
        time.perf_counter() - t_start,
        dense["accuracy"],
        best["checkpoint"],
        best["accuracy"],
        100 * best["params_saved"],
        folder / "report.md",
    )
    return report
