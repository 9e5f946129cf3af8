"""The prune-and-finetune pipeline: dense model → (plan → prune → fine-tune → evaluate) per level → report.

Read top to bottom, :func:`run` is the whole job. Every result is written atomically and recorded in
``state.json`` before the next step starts, so the same command resumes a killed run. With several
accelerate processes every rank computes, and only the main process writes. The main process holds
the output folder's lock (:class:`prunekit.lock.FolderLock`) for the whole run, so a second run into
the same folder stops at once instead of mixing its files with this one's.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.config import RunConfig
from prunekit.errors import UserError
from prunekit.lock import FolderLock
from prunekit.run_state import RunState, check_output_folder
from prunekit.task import Task, level_result, make_level_plan, per_process_batch, seed_everything

log = logging.getLogger("prunekit")


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
        from prunekit.level_stage import calibrated_gap

        metrics["predicted_gap_calibrated"] = calibrated_gap(task, metrics["estimate"])
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


def _level_stage(
    task: Task,
    state: RunState,
    accelerator,
    index: int,
    level: float,
    dense: dict[str, Any],
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from prunekit.level_stage import calibrated_gap, one_shot_record
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
    sched = task.cfg.prune.schedule
    # chain_levels: every level after the first continues from the previous level's checkpoint
    start_from = level_name(task.cfg.prune.levels[index - 1]) if sched.chain_levels and index else None
    if sched.name != "one_shot" or start_from:  # steps of prune -> fine-tune -> re-estimate
        from prunekit.level_stage import scheduled_stage

        return scheduled_stage(task, state, accelerator, name, level, seed, dense, t0, start_from, previous)
    model, _ = load(state.folder / "dense", trust_remote_code=task.cfg.model.trust_remote_code)
    plan, groups = make_level_plan(task, model, level, seed, accelerator=accelerator)
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
        **level_result(level, m, dense, before["accuracy"], name, estimate, plan),
        **one_shot_record(level, m, dense, plan, history),
        "predicted_gap_calibrated": calibrated_gap(task, estimate, plan),
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
    }
    if estimate is not None or result["predicted_gap"] is not None:
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


@contextmanager
def _folder_locked(folder: Path):
    """Hold ``folder``'s lock in the main process (rank 0) while the body runs.

    A lock file (and a folder) created only to hold the lock is removed again when the run fails
    before writing anything, so bad input leaves no trace. A lock refused on rank 0 ends that rank with the one-line
    error; the launcher then stops the other ranks."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    created = not folder.exists()
    lock = FolderLock(folder)
    had_lock_file = lock.path.exists()
    lock.acquire()
    try:
        yield
    except BaseException:
        if not had_lock_file and not (folder / "state.json").exists():  # failed before writing
            lock.path.unlink(missing_ok=True)  # still held: no other run can have locked it
            if created and not any(folder.iterdir()):
                folder.rmdir()
        raise
    finally:
        lock.release()


def run(cfg: RunConfig, output_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole pipeline for ``cfg``; returns the report dict (also written to the folder).

    Nothing is written before every check passed (config, output path, folder ownership, data,
    model, the hardest level's plan); the folder is locked for the whole run."""
    folder = output_folder(cfg, output_dir)
    check_output_folder(folder)  # a file, a path under a file, no write permission: one line now
    with _folder_locked(folder):
        return _run(cfg, folder, overwrite)


def check_schedule(cfg: RunConfig) -> None:
    """A schedule this task cannot follow is one line before any work, never silently ignored."""
    sched = cfg.prune.schedule
    if cfg.data.name == "lm_text" and (sched.name != "one_shot" or sched.chain_levels):
        raise UserError(
            "the causal-LM task (data.name lm_text) prunes each level one shot from the dense model and "
            "recovers it by steps: set prune.schedule.name to one_shot and prune.schedule.chain_levels to false"
        )
    if sched.chain_levels and cfg.prune.metric == "latency":
        raise UserError(
            "prune.schedule.chain_levels continues in params or MACs, but a latency target is searched from "
            "the dense model: set prune.schedule.chain_levels to false, or prune.metric to macs"
        )


def _run(cfg: RunConfig, folder: Path, overwrite: bool) -> dict[str, Any]:
    """The pipeline into ``folder`` (checked and locked by :func:`run`)."""
    check_schedule(cfg)
    if cfg.data.name == "lm_text":  # the causal-LM task has its own stages (perplexity, recovery by steps)
        from prunekit.lm_pipeline import run_lm

        return run_lm(cfg, folder, overwrite, setup_logging, level_name)
    from prunekit.planner import from_prune_config, known_planners
    from prunekit.report import build_report, write_report
    from prunekit.train import make_accelerator

    t_start = time.perf_counter()
    if cfg.prune.planner not in known_planners():
        raise UserError(
            f"unknown planner '{cfg.prune.planner}' in prune.planner: choose one of {', '.join(known_planners())}"
        )
    from_prune_config(cfg.prune, cfg.seed)  # an unknown importance criterion or option fails here
    accelerator = make_accelerator(mixed_precision=cfg.finetune.mixed_precision, grad_accum_steps=1)
    for section in ("train", "finetune"):  # the global batch must split evenly over the processes
        per_process_batch(getattr(cfg, section).batch_size, accelerator.num_processes, section)
    # Everything that can fail on bad input (data, model, folder ownership) is checked before the
    # folder is touched, so a bad config leaves an existing output folder as it was.
    state = RunState.open(folder, cfg.fingerprint(), cfg.model_dump(mode="json"), overwrite=overwrite)
    seed_everything(cfg.seed)
    task = Task(cfg)
    model = task.build_dense()  # before the folder is touched: a bad model path or kwarg fails here
    if not state.is_done(level_name(cfg.prune.levels[-1])):
        # The hardest level, planned on a copy of the untrained model: an unreachable target (layers
        # at their floors, embeddings never pruned) fails now, not after the dense training.
        make_level_plan(task, copy.deepcopy(model), cfg.prune.levels[-1], cfg.seed, accelerator=accelerator)
    if accelerator.is_main_process:
        state.start()
    accelerator.wait_for_everyone()
    setup_logging(folder, accelerator.is_main_process)
    log.info("run '%s' → %s (seed %d, %d process(es))", cfg.name, folder, cfg.seed, accelerator.num_processes)

    dense = _dense_stage(task, state, accelerator, model)
    levels: list[dict[str, Any]] = []
    for i, lv in enumerate(cfg.prune.levels):  # each rank holds every result (only rank 0 has state.json's)
        levels.append(_level_stage(task, state, accelerator, i, lv, dense, levels[-1] if levels else None))

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
