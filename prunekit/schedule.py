"""The schedule: prune -> fine-tune -> re-estimate, in steps, with one fixed fine-tuning budget.

``one_shot`` prunes once and fine-tunes with the whole budget; ``linear`` takes ``steps`` equal steps in
the saved fraction; ``constant_gap`` sizes each step so that the predicted gap of the planned model (at
fixed weights, Level 2) stays within ``tolerance`` (relative) of the reference (the dense model's
predicted gap, or ``reference``): it tries the whole remaining way first and halves the step until the
prediction holds, so steps are large where the prediction barely moves and small where it rises. The
total number of optimizer steps is that of one one-shot fine-tune, shared out over the steps (the last
step takes what is left), so a scheduled level costs no more training than a one-shot one. Where no step
holds the prediction (or ``steps`` run out first), the run stops at the smallest model that held it and
says so in ``status``; with ``force`` it goes on to the target and records the predicted gap. A forced
step still adapts: it aims at an equal share of the predicted gap's remaining rise (from the current
model's gap to the one-shot plan's gap at the target, over the steps left) and takes the largest tried
step that stays under that aim, but never less than an equal split of the way left (``linear``), so
where the prediction is flat it goes faster than ``linear`` and never back-loads the cut.

Every intermediate step is held on the way to its destination: the step first plans the whole
remaining way from the current model (the plan a one-shot prune would make now), then plans its own
target with each group keeping no fewer units than the destination and moving at least ``PACE`` of
its proportional share of the way. A planner on fixed-weight sensitivities is otherwise myopic: step
by step it thinned only the cheapest layer (MNIST-1D, theory planner: a 64-channel conv to 16 by 73 %
saved, the other two untouched) and left the last step to cut the others to 5-10 channels at once,
21-38 % accuracy at 97 % saved against 59-77 % one-shot (results/benchmark_commands.md).

:func:`run_schedule` is the loop, on callables, so that it can be tested on its own;
:mod:`prunekit.level_stage` runs it as the pipeline's level stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.config import ScheduleConfig
from prunekit.structure.plan import Plan

# (model, saved of *it*, step, group -> (fewest, most) units or None) -> plan, groups
PlanFn = Callable[[nn.Module, float, int, "dict[str, tuple[int, int]] | None"], tuple[Plan, Any]]
PACE = 0.5  # an intermediate step moves every group at least this share of its proportional way
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
    reference_gap: float | None = None  # constant_gap: the predicted gap each step is held to (± tolerance)


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


def _on_the_way(destination: Plan, share_of_way: float) -> dict[str, tuple[int, int]]:
    """Per group, (fewest, most) units a step that goes ``share_of_way`` of the saved fraction toward
    ``destination`` may keep: no fewer than the destination keeps, and at least ``PACE`` of the
    proportional cut (all groups moving the same share of their way meet at least the step's target:
    the saved params are concave in that share)."""
    out = {}
    for g, kept in destination.keep.items():
        n, d = destination.num_units[g], len(kept)
        most = n - int(PACE * share_of_way * (n - d))
        out[g] = (d, max(d, most))
    return out


@dataclass
class _Step:
    target: float | None  # None: stop here (nothing held, no force)
    plan: Plan | None = None
    groups: Any = None
    status: str = ""  # "" | "held" | "forced"
    note: str = ""


def _constant_gap_step(
    model: nn.Module,
    level: float,
    saved_now: float,
    i: int,
    n_steps: int,
    cfg: ScheduleConfig,
    limit: float | None,
    plan_fn: PlanFn,
    predict: Callable[[Plan | None], float | None],
) -> _Step:
    """The largest of the remaining way, 1/2, 1/4, ... of it whose predicted gap stays under ``limit``;
    forced where none does (see the module docstring)."""
    remaining = level - saved_now
    tried = []  # (target, plan, groups, predicted gap); the first is the destination
    for t in (saved_now + remaining / 2**k for k in range(HALVINGS + 1)):
        bounds = _on_the_way(tried[0][1], (t - saved_now) / remaining) if tried else None
        plan, groups = plan_fn(model, relative(saved_now, t), i, bounds)
        gap = predict(plan)
        tried.append((t, plan, groups, gap))
        if limit is None or (gap is not None and gap <= limit):
            break
    t, plan, groups, gap = tried[-1]
    held = limit is None or (gap is not None and gap <= limit)
    last = i == n_steps - 1
    if held and not (last and t < level):
        return _Step(t, plan, groups)
    if not cfg.force:
        if not held:
            note = (
                f"stopped at {saved_now:.3f} saved: no step toward {level:.3f} keeps the predicted "
                f"gap within {cfg.tolerance:.0%} of the reference; force: true goes on"
            )
            return _Step(None, status="held", note=note)
        note = f"{cfg.steps} steps reach {t:.3f} saved, not {level:.3f}, with the predicted gap held; "
        return _Step(t, plan, groups, "held", note + "raise steps or set force: true")
    if last:  # the whole remaining way, tried first
        t, plan, groups, _ = tried[0]
        return _Step(t, plan, groups, "forced")
    return _forced_even_step(model, level, saved_now, i, n_steps, tried, plan_fn, predict)


def _forced_even_step(
    model: nn.Module,
    level: float,
    saved_now: float,
    i: int,
    n_steps: int,
    tried: list[tuple[float, Plan, Any, float | None]],
    plan_fn: PlanFn,
    predict: Callable[[Plan | None], float | None],
) -> _Step:
    """The largest tried step whose predicted gap stays under an equal share of the rise still to come."""
    # never shorter than an equal split of what is left: at fixed weights the first cut makes the
    # predicted gap jump (0.016 -> 0.04 at 11 % saved on MNIST-1D), so aims alone took 1/8 steps and
    # left one huge last step; without predictions to share out, the equal split is the step
    linear = saved_now + (level - saved_now) / (n_steps - i)
    now, end = predict(None), tried[0][3]
    t, plan, groups = linear, None, None
    if now is not None and end is not None:
        aim = now + (end - now) / (n_steps - i)
        under = [x for x in tried if x[3] is not None and x[3] <= aim]
        t, plan, groups, _ = max(under, key=lambda x: x[0]) if under else tried[-1]
    if t < linear - 1e-9 or plan is None:
        bounds = _on_the_way(tried[0][1], 1.0 / (n_steps - i))
        t, (plan, groups) = linear, plan_fn(model, relative(saved_now, linear), i, bounds)
    return _Step(t, plan, groups, "forced")


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
    reference: float | None = None,
) -> ScheduleResult:
    """Prune ``model`` in place to ``level`` saved of ``size_fn`` by the schedule ``cfg``.

    ``start``: the size ``level`` is measured against (default: ``model``'s own; a chained level passes
    the dense model's, so that the 70 % level continues from the 50 % model). ``reference``: the gap to
    hold when ``cfg.reference`` is unset (a chained level passes the dense model's; default: ``model``'s
    own predicted gap). ``measure_fn``: sizes of
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
                ref = next((r for r in (cfg.reference, reference) if r is not None), None)
                ref = predict(None) if ref is None else ref
                out.reference_gap = ref
                limit = None if ref is None else ref * (1.0 + cfg.tolerance)
            step = _constant_gap_step(model, level, saved_now, i, n_steps, cfg, limit, plan_fn, predict)
            target, plan, groups = step.target, step.plan, step.groups
            if step.status:
                out.status, out.note = step.status, step.note or out.note
            if target is None:
                break
        else:
            target = fixed[i]
            bounds = None
            if target < level - 1e-9:  # held on the way to the destination (module docstring)
                destination = plan_fn(model, relative(saved_now, level), i, None)[0]
                bounds = _on_the_way(destination, (target - saved_now) / (level - saved_now))
            plan, groups = plan_fn(model, relative(saved_now, target), i, bounds)
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
