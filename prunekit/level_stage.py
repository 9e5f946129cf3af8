"""The pipeline's level stage under a schedule (:mod:`prunekit.schedule`), and the schedule keys of a
one-shot level, so that every level of a report has the same shape.

A level starts from the dense model, or (``prune.schedule.chain_levels``) from the previous level's
checkpoint: sizes and targets stay relative to the dense model, the fine-tuning budget of a level is one
one-shot budget either way, and the checkpoint holds one plan relative to the base (the start's plan
composed with this level's).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from torch import nn

from prunekit.schedule import plan_summary, run_schedule
from prunekit.structure.plan import Plan


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
    reference: float | None = None,
    base_units: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Prune ``model`` to ``level`` by ``task.cfg.prune.schedule``; fine-tuning included.

    ``start``: the size ``level`` is relative to (the dense model's when ``model`` is a chained level's
    starting point; default ``model``'s own); ``reference``: the predicted gap a chained level holds
    (the first level's reference, i.e. the dense model's); ``base_units``: the dense model's group widths
    (default: ``model``'s), which every step's per-layer limits stay fractions of. Returns ``{"model", "plan" (``model`` -> final), "steps",
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
    if base_units is None:
        from prunekit.structure import find_groups

        base_units = {
            g.name: g.num_units
            for g in find_groups(model, task.example, ignore=cfg.prune.ignore, experts=cfg.prune.experts)
        }

    bn_batches = list(itertools.islice(loader, cfg.prune.importance_batches))

    def plan_fn(m: nn.Module, saved: float, i: int, bounds: dict[str, tuple[int, int]] | None = None):
        return make_level_plan(task, m, max(0.0, saved), seed + 100 * i, accelerator, base_units, bounds)

    def apply_fn(m: nn.Module, plan: Plan, groups: Any) -> None:
        apply_plan_(m, plan, task.example, groups=groups)

    def gap_fn(m: nn.Module, groups: Any):
        if not (cfg.estimate.enabled or sched.name == "constant_gap"):
            return lambda plan: None
        from prunekit.planner.masked import adapted_bn
        from prunekit.structure import find_groups, mask_groups
        from prunekit.theory.estimator import Estimator

        gs = find_groups(m, task.example, ignore=cfg.prune.ignore, experts=cfg.prune.experts)
        est = Estimator(m, task.splits, cfg.estimate, groups=gs, accelerator=accelerator, seed=seed)

        def predict(plan: Plan | None) -> dict[str, float | None]:
            if plan is None:
                p = est.predict(None)
            else:  # the planned model masked at fixed weights, its BatchNorm statistics re-estimated on
                # the probe batches as the curve planners do: stale statistics make a thinned model look
                # broken where fine-tuning would not find it so (quickstart, 6 % saved: 0.048 -> 0.030)
                removed = {g: sorted(set(range(plan.num_units[g])) - set(k)) for g, k in plan.keep.items()}
                removed = {g: units for g, units in removed.items() if units}
                with mask_groups(m, gs, removed), adapted_bn(m, bn_batches, True):
                    p = est.predict(removed)
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
        model, level, sched, total, plan_fn, apply_fn, gap_fn, train_fn, size_fn, start, measure_fn, reference
    )
    return {
        "model": out.model,
        "plan": out.plan,
        "steps": out.steps,
        "status": out.status,
        "note": out.note,
        "total_train_steps": out.total_train_steps,
        "reference_gap": out.reference_gap,
        "accuracy_before_finetune": before[-1] if before else None,
        "history": {"steps": out.total_train_steps, "parts": histories},
    }


def _dense_units(task: Any, prior: Plan | None) -> dict[str, int] | None:
    """The run's dense group widths, from a chained start's plan (relative to the base) and the base's
    own plan (a run that starts from a pruned checkpoint); None when the start holds no plan."""
    if prior is None:
        return None
    base = task.base_plan
    if base is None:  # the run's dense model is the base
        return dict(prior.num_units)
    return {g: len(base.keep[g]) if g in base.keep else n for g, n in base.num_units.items()}


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
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pipeline's level stage under a schedule: steps, then measure, save and record as one-shot does.

    ``start_from``: the checkpoint (a finished earlier level of this run) the level continues from
    (``prune.schedule.chain_levels``); its plan relative to the base composes with this level's, so the
    checkpoint still holds one plan relative to the base. Default: the dense model. ``previous``: that
    level's result (its ``schedule_reference_gap`` is the gap a chained constant_gap level holds).
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
    size0, reference, units = None, None, None
    prior = PlanType.from_dict(meta["plan"]) if start_from is not None and meta.get("plan") else None
    if start_from is not None:
        size0 = dense["params"] if task.cfg.prune.metric == "params" else dense["macs"]
        reference = (previous or {}).get("schedule_reference_gap")
        units = _dense_units(task, prior)
        log.info("%s: continues from %s (chain_levels)", name, start_from)
    s = scheduled_level(task, model, level, seed, accelerator, size0, reference, units)
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
        "schedule_reference_gap": s["reference_gap"],
        "starts_from": start_from or "dense",
        "steps": s["steps"],
        "total_train_steps": s["total_train_steps"],
        "seconds": round(time.perf_counter() - t0, 2),
        "history": s["history"],
    }
    if estimate is not None or result["predicted_gap"] is not None:
        result.update(task.generalization(model, accelerator, m["accuracy"]))
    if start_from is not None:  # the start's plan is relative to the base already
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
