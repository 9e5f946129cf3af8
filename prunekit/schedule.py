"""The schedule: prune -> fine-tune -> re-estimate, in steps, with one fixed fine-tuning budget.

``one_shot`` prunes once and fine-tunes with the whole budget; ``linear`` takes ``steps`` equal steps in
the saved fraction; ``constant_gap`` sizes each step so that the predicted gap of the planned model (at
fixed weights, Level 2) stays within ``tolerance`` (relative) of the reference (the dense model's
predicted gap, or ``reference``): it tries the whole remaining way first and halves the step until the
prediction holds, so steps are large where the prediction barely moves and small where it rises. The
total number of optimizer steps is that of one one-shot fine-tune, shared out over the steps (the last
step takes what is left), so a scheduled level costs no more training than a one-shot one. Where no step
holds the prediction (or ``steps`` run out first), the run stops at the smallest model that held it and
says so in ``status``; with ``force`` it goes on to the target and records the predicted gap.

:func:`run_schedule` is the loop, on callables, so that it can be tested on its own;
:func:`scheduled_level` is the pipeline's level stage with a schedule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.config import ScheduleConfig
from prunekit.structure.plan import Plan

PlanFn = Callable[[nn.Module, float, int], tuple[Plan, Any]]  # (model, saved of *it*, step) -> plan, groups
ApplyFn = Callable[[nn.Module, Plan, Any], None]
GapFn = Callable[[nn.Module, Any], Callable[[Plan | None], float | None]]  # (model, groups) -> predict
TrainFn = Callable[[nn.Module, int, int], dict[str, Any]]  # (model, optimizer steps, step) -> history
SizeFn = Callable[[nn.Module], float]
MeasureFn = Callable[[nn.Module], dict[str, Any]]
HALVINGS = 3  # constant_gap tries the remaining way, then 1/2, 1/4, 1/8 of it


@dataclass
class ScheduleResult:
    model: nn.Module
    plan: Plan | None  # one plan from the starting model to the final one (composed over the steps)
    steps: list[dict[str, Any]] = field(default_factory=list)
    status: str = "reached"  # "reached" | "held" (stopped short of the target) | "forced"
    saved: float = 0.0
    total_train_steps: int = 0
    note: str = ""


def _gaps(value: Any) -> tuple[float | None, float | None]:
    """``(stated, calibrated)`` of one ``gap_fn`` prediction (a number is the stated gap alone)."""
    if isinstance(value, dict):
        return value.get("stated"), value.get("calibrated")
    return value, None


def _stated(predict: Callable[[Plan | None], Any]) -> Callable[[Plan | None], float | None]:
    return lambda plan: _gaps(predict(plan))[0]


def plan_summary(plan: Plan) -> dict[str, Any]:
    """What one step's plan did, small enough for report.json: kept / total units per pruned group."""
    pruned = {g: [len(k), plan.num_units[g]] for g, k in plan.keep.items() if len(k) < plan.num_units[g]}
    return {
        "planner": plan.planner,
        "target": dict(plan.target),
        "predicted_gap": plan.predicted_gap,
        "pruned_groups": pruned,  # group -> [kept, of]
    }


def share(total: int, used: int, steps_left: int) -> int:
    """This step's optimizer steps: an equal share of what is left (all of it on the last step)."""
    left = total - used
    return left if steps_left <= 1 else left // steps_left


def linear_targets(level: float, steps: int, begin: float = 0.0) -> list[float]:
    """``steps`` equal steps in the saved fraction from ``begin`` (a chained level's start) to ``level``."""
    return [begin + (level - begin) * (i + 1) / steps for i in range(steps)]


def relative(saved_now: float, target: float) -> float:
    """The fraction of the *current* model to remove so that ``target`` of the start is saved."""
    return 1.0 - (1.0 - target) / (1.0 - saved_now)


def run_schedule(
    model: nn.Module,
    level: float,
    cfg: ScheduleConfig,
    total_steps: int,
    plan_fn: PlanFn,
    apply_fn: ApplyFn,
    gap_fn: GapFn,
    train_fn: TrainFn,
    size_fn: SizeFn,
    start: float | None = None,
    measure_fn: MeasureFn | None = None,
) -> ScheduleResult:
    """Prune ``model`` in place to ``level`` saved of ``size_fn`` by the schedule ``cfg``.

    ``start``: the size ``level`` is measured against (default: ``model``'s own; a chained level passes
    the dense model's, so that the 70 % level continues from the 50 % model). ``measure_fn``: sizes of
    the model after each step (params, MACs), recorded in the step. A ``gap_fn`` prediction may be a
    number (the stated gap) or ``{"stated": x, "calibrated": y}``; the schedule holds the stated one.
    """
    from prunekit.pruning import compose_plans

    start = size_fn(model) if start is None else float(start)
    out = ScheduleResult(model, None)
    n_steps = 1 if cfg.name == "one_shot" else cfg.steps
    begin = max(0.0, 1.0 - size_fn(model) / start)
    fixed = [level] if cfg.name == "one_shot" else linear_targets(level, cfg.steps, begin)
    limit = None
    used = 0
    for i in range(n_steps):
        saved_now = 1.0 - size_fn(model) / start
        plan, groups = None, None
        predict: Callable[[Plan | None], float | None] | None = None
        if cfg.name == "constant_gap":
            predict = _stated(gap_fn(model, None))
            if limit is None:
                ref = cfg.reference if cfg.reference is not None else predict(None)
                limit = None if ref is None else ref * (1.0 + cfg.tolerance)
            remaining = level - saved_now
            tried = [saved_now + remaining / 2**k for k in range(HALVINGS + 1)]
            chosen = None
            for t in tried:
                plan, groups = plan_fn(model, relative(saved_now, t), i)
                gap = predict(plan)
                if limit is None or (gap is not None and gap <= limit):
                    chosen = t
                    break
            last = i == n_steps - 1
            if chosen is None or (last and chosen < level):
                if not cfg.force:
                    if chosen is None:
                        out.status = "held"
                        out.note = (
                            f"stopped at {saved_now:.3f} saved: no step toward {level:.3f} keeps the predicted "
                            f"gap within {cfg.tolerance:.0%} of the reference; force: true goes on"
                        )
                        break
                    out.status, out.note = (
                        "held",
                        (
                            f"{cfg.steps} steps reach {chosen:.3f} saved, not {level:.3f}, with the predicted gap "
                            "held; raise steps or set force: true"
                        ),
                    )
                else:
                    chosen = level
                    plan, groups = plan_fn(model, relative(saved_now, level), i)
                    out.status = "forced"
            target = chosen
        else:
            target = fixed[i]
            plan, groups = plan_fn(model, relative(saved_now, target), i)
            predict = gap_fn(model, groups)
        planned = _gaps(predict(plan) if predict is not None else None)
        apply_fn(model, plan, groups)
        out.plan = plan if out.plan is None else compose_plans(out.plan, plan)
        reached = target >= level - 1e-9 or out.status == "held"
        steps = share(total_steps, used, 1 if reached else n_steps - i)
        t0 = time.perf_counter()
        history = train_fn(model, steps, i) if steps > 0 else {}
        used += steps
        seconds = round(time.perf_counter() - t0, 2)
        after = _gaps(gap_fn(model, None)(None) if cfg.name != "one_shot" else None)
        out.steps.append(
            {
                "step": i,
                "target_saved": target,
                "saved": 1.0 - size_fn(model) / start,
                **(measure_fn(model) if measure_fn is not None else {}),
                # stated: the bound's own form; calibrated: a fitted Calibration's gap (None without one)
                "predicted_gap_planned": planned[0],
                "predicted_gap_planned_calibrated": planned[1],
                "predicted_gap_after_finetune": after[0],
                "predicted_gap_after_finetune_calibrated": after[1],
                "train_steps": steps,
                "val_accuracy": (history.get("val_accuracy") or [None])[-1],
                "finetune_seconds": seconds,
                "keep": {g: len(k) for g, k in plan.keep.items()},
                "plan": plan_summary(plan),
            }
        )
        if reached:
            break
    if used < total_steps:  # stopped early: the rest of the budget fine-tunes the model it stopped at
        train_fn(model, total_steps - used, len(out.steps))
        if out.steps:
            out.steps[-1]["train_steps"] += total_steps - used
        used = total_steps
    out.total_train_steps = used
    out.saved = 1.0 - size_fn(model) / start
    return out


# ------------------------------------------------------------------------------ the pipeline's level


def _calibration(task: Any) -> Any:
    """The planner's Calibration (``prune.planner_options.calibration``), or None."""
    path = task.cfg.prune.planner_options.get("calibration")
    if not path:
        return None
    from pathlib import Path

    from prunekit.theory.bound import Calibration

    return Calibration.from_json(Path(path).read_text())


def _calibrated(cal: Any, p: Any) -> float | None:
    """The calibrated gap of a Prediction (or an estimate dict); None without a calibration."""
    if cal is None or p is None:
        return None
    get = p.get if isinstance(p, dict) else lambda k: getattr(p, k)
    try:
        return float(cal.predict(C=get("C_arch"), T=get("T_opt"), n=get("n"), d_eff=get("d_eff")))
    except ValueError:  # fitted on another n / d_eff: the fit says nothing here
        return None


def calibrated_gap(task: Any, estimate: dict[str, Any] | None, plan: Plan | None = None) -> float | None:
    """A level's calibrated predicted gap: from its estimate, else the planner's own (a curve planner
    given a calibration predicts the calibrated gap); None without a calibration."""
    cal = _calibration(task)
    if cal is None:
        return None
    if estimate:
        return _calibrated(cal, estimate)
    return plan.predicted_gap if plan is not None else None


def one_shot_record(
    level: float, m: dict[str, Any], dense: dict[str, Any], plan: Plan, history: dict[str, Any]
) -> dict[str, Any]:
    """The schedule keys of a one-shot level (one step), so every level of a report has the same shape."""
    metric = {"macs": "macs", "latency": "latency_ms"}.get(plan.target.get("metric"), "params")
    return {
        "schedule": "one_shot",
        "schedule_status": "reached",
        "schedule_note": "",
        "starts_from": "dense",
        "total_train_steps": history.get("steps"),
        "steps": [
            {
                "step": 0,
                "target_saved": level,
                "saved": 1.0 - m[metric] / dense[metric],
                "params": m["params"],
                "macs": m["macs"],
                "predicted_gap_planned": plan.predicted_gap,  # the planner's, at the dense weights
                "predicted_gap_planned_calibrated": None,
                "predicted_gap_after_finetune": None,
                "predicted_gap_after_finetune_calibrated": None,
                "train_steps": history.get("steps"),
                "val_accuracy": (history.get("val_accuracy") or [None])[-1],
                "keep": {g: len(k) for g, k in plan.keep.items()},
                "plan": plan_summary(plan),
            }
        ],
    }


def scheduled_level(
    task: Any,
    model: nn.Module,
    level: float,
    seed: int,
    accelerator: Any,
    start: float | None = None,
) -> dict[str, Any]:
    """Prune ``model`` to ``level`` by ``task.cfg.prune.schedule``; fine-tuning included.

    ``start``: the size ``level`` is relative to (the dense model's when ``model`` is a chained level's
    starting point; default ``model``'s own). Returns ``{"model", "plan" (``model`` -> final), "steps",
    "status", "note", "history", ...}``; the caller measures and saves as for a one-shot level.
    """
    from prunekit.metrics import count_macs, count_params
    from prunekit.pruning import apply_plan_
    from prunekit.task import make_level_plan
    from prunekit.train.loop import total_optimizer_steps

    cfg = task.cfg
    sched = cfg.prune.schedule
    loader = task.loader("train", cfg.finetune.batch_size, shuffle=True, seed=seed)
    total = total_optimizer_steps(cfg.finetune, len(loader), cfg.finetune.grad_accum_steps)
    histories: list[dict[str, Any]] = []
    before: list[float] = []  # test accuracy before each step's fine-tune, as one-shot levels report it
    cal = _calibration(task)

    def plan_fn(m: nn.Module, saved: float, i: int):
        return make_level_plan(task, m, max(0.0, saved), seed + 100 * i, accelerator=accelerator)

    def apply_fn(m: nn.Module, plan: Plan, groups: Any) -> None:
        apply_plan_(m, plan, task.example, groups=groups)

    def gap_fn(m: nn.Module, groups: Any):
        if not (cfg.estimate.enabled or sched.name == "constant_gap"):
            return lambda plan: None
        from prunekit.structure import find_groups
        from prunekit.theory.estimator import Estimator

        gs = find_groups(m, task.example, ignore=cfg.prune.ignore)
        est = Estimator(m, task.splits, cfg.estimate, groups=gs, accelerator=accelerator, seed=seed)

        def predict(plan: Plan | None) -> dict[str, float | None]:
            p = est.predict(plan)
            return {"stated": p.bound, "calibrated": _calibrated(cal, p)}

        return predict

    def train_fn(m: nn.Module, steps: int, i: int) -> dict[str, Any]:
        from prunekit.train import evaluate

        before.append(evaluate(m, task.loader("test", cfg.data.batch_size), accelerator)["accuracy"])
        recipe = cfg.finetune.model_copy(update={"max_steps": steps})
        h = task.train(m, recipe, accelerator, seed=seed + 100 * i, desc=f"level {level:g} step {i}")
        histories.append(h)
        return h

    def size_fn(m: nn.Module) -> float:
        return float(count_params(m) if cfg.prune.metric == "params" else count_macs(m, task.example))

    def measure_fn(m: nn.Module) -> dict[str, Any]:
        return {"params": count_params(m), "macs": count_macs(m, task.example)}

    out = run_schedule(
        model, level, sched, total, plan_fn, apply_fn, gap_fn, train_fn, size_fn, start, measure_fn
    )
    return {
        "model": out.model,
        "plan": out.plan,
        "steps": out.steps,
        "status": out.status,
        "note": out.note,
        "total_train_steps": out.total_train_steps,
        "accuracy_before_finetune": before[-1] if before else None,
        "history": {"steps": out.total_train_steps, "parts": histories},
    }


def scheduled_stage(
    task: Any,
    state: Any,
    accelerator: Any,
    name: str,
    level: float,
    seed: int,
    dense: dict[str, Any],
    t0: float,
    start_from: str | None = None,
) -> dict[str, Any]:
    """The pipeline's level stage under a schedule: steps, then measure, save and record as one-shot does.

    ``start_from``: the checkpoint (a finished earlier level of this run) the level continues from
    (``prune.schedule.chain_levels``); its plan relative to the base composes with this level's, so the
    checkpoint still holds one plan relative to the base. Default: the dense model.
    ``report.json`` gets ``levels[].steps[]`` (each step's target, params, MACs, saved fraction, predicted
    gap stated and calibrated, planned and after fine-tuning, training steps, validation accuracy, plan
    summary), ``schedule_status``, ``schedule_note`` and ``total_train_steps``.
    """
    import logging

    from prunekit.pruning import compose_plans
    from prunekit.pruning.checkpoint import load, save
    from prunekit.structure.plan import Plan as PlanType

    log = logging.getLogger("prunekit")
    source = state.folder / (start_from or "dense")
    model, meta = load(source, trust_remote_code=task.cfg.model.trust_remote_code)
    size0 = None
    if start_from is not None:
        size0 = dense["params"] if task.cfg.prune.metric == "params" else dense["macs"]
        log.info("%s: continues from %s (chain_levels)", name, start_from)
    s = scheduled_level(task, model, level, seed, accelerator, start=size0)
    model, plan = s["model"], s["plan"]
    if s["note"]:
        log.warning("%s: %s", name, s["note"])
    m = task.measure(model, accelerator)
    estimate = task.predict(model, accelerator, seed=seed) if task.cfg.estimate.enabled else None
    from prunekit.task import level_result

    result = {
        # accuracy before the last step's fine-tune
        **level_result(level, m, dense, s["accuracy_before_finetune"], name, estimate, plan),
        "predicted_gap_calibrated": calibrated_gap(task, estimate, plan),
        "schedule": task.cfg.prune.schedule.name,
        "schedule_status": s["status"],
        "schedule_note": s["note"],
        "starts_from": start_from or "dense",
        "steps": s["steps"],
        "total_train_steps": s["total_train_steps"],
        "seconds": round(time.perf_counter() - t0, 2),
        "history": s["history"],
    }
    if estimate is not None or result["predicted_gap"] is not None:
        result.update(task.generalization(model, accelerator, m["accuracy"]))
    if start_from is not None:  # the start's plan is relative to the base already
        prior = PlanType.from_dict(meta["plan"]) if meta.get("plan") else None
        from_base = compose_plans(prior, plan) if prior is not None else plan
    else:
        from_base = task.plan_from_base(plan)
    if accelerator.is_main_process:
        meta_out = {k: v for k, v in result.items() if k != "history"}
        save(
            model,
            state.folder / name,
            from_base,
            meta_out,
            task.base,
            task.example,
            tokenizer_source=task.tokenizer_source,
        )
        state.mark_done(name, result)
    accelerator.wait_for_everyone()
    return result
