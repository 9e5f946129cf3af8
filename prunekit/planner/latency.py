"""Latency targets: plan on MACs (a cheap, exact proxy), measure real latency, search until within 5 %.

Latency is not additive over layers and not known before surgery, so no planner allocates on it
directly. :func:`plan_for_latency` runs the configured planner on a MAC target and searches that MAC
target (bisection with linear interpolation, a handful of measurements) until the measured median
latency of the *pruned* candidate is within :data:`~prunekit.planner.target.LATENCY_TOLERANCE` of the
target, each candidate's latency taken relative to the dense model timed just before it (a shared
machine's speed drifts within a search). The planner never does surgery itself (the layers say so):
the caller passes ``latency_of``, ``plan | None -> stats`` (``None`` is the dense model), with stats as
:func:`prunekit.metrics.measure_latency` returns them; ``prunekit.task`` builds it from the config.

Bad input fails before any pruning, in one line: a dense latency whose spread is above the limit
(:func:`prunekit.metrics.latency.check_stable`), and a target that the per-layer floors cannot reach
(checked on the smallest model the floors allow, with its measured latency in the message).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from prunekit.metrics.latency import MEDIAN_ERROR_LIMIT, check_stable, median_error
from prunekit.planner.allocate import SizeModel, ceiling_counts, floor_counts
from prunekit.planner.target import LATENCY_TOLERANCE, Target
from prunekit.structure import Group, Plan

LatencyOf = Callable[[Plan | None], dict[str, Any]]  # plan (None: the dense model) -> latency stats
AIM = 0.02  # stop searching once a candidate is this close (relative): re-measuring moves it by ~1-3 %
MAX_MEASUREMENTS = 10  # candidates measured at most (each is one plan + one surgery + repeats passes)
RETRIES = 3  # an unstable candidate (or re-measurement) is measured again this often before giving up


def search_macs_saved(
    ratio_at: Callable[[float], float],
    keep: float,
    top: float,
    aim: float = AIM,
    max_steps: int = MAX_MEASUREMENTS,
) -> list[tuple[float, float]]:
    """The MAC fractions saved tried, with the measured latency ratio (candidate / dense) at each.

    ``ratio_at(s)`` is the latency ratio of the model planned to save ``s`` of its MACs; it falls as
    ``s`` grows, up to noise. ``top`` is the most the floors allow. The first try is ``top`` (is the
    target reachable at all?), then the interval ``[lo, hi]`` with ``ratio(lo) > keep >= ratio(hi)``
    shrinks by linear interpolation (latency ~ overhead + MACs), each try kept at least 10 % of the
    interval from its ends so that it shrinks even where the line is a poor fit. Stops at the first
    ratio within ``aim`` of ``keep`` (relative), or after ``max_steps`` tries.
    """
    tried = [(top, ratio_at(top))]
    if tried[0][1] > keep * (1 + LATENCY_TOLERANCE):
        return tried  # unreachable: the caller says so
    lo, hi = (0.0, 1.0), tried[0]

    def close(r: float) -> bool:
        return abs(r / keep - 1) <= aim

    while len(tried) < max_steps and not any(close(r) for _, r in tried):
        (s0, r0), (s1, r1) = lo, hi
        if s1 - s0 < 1e-3:
            break  # adjacent plans: nothing lies between them
        guess = s0 + (r0 - keep) * (s1 - s0) / (r0 - r1) if r0 > r1 else (s0 + s1) / 2
        margin = 0.1 * (s1 - s0)
        s = min(max(guess, s0 + margin), s1 - margin)
        r = ratio_at(s)
        tried.append((s, r))
        if r > keep:
            lo = (s, r)
        else:
            hi = (s, r)
    return tried


STEP_WIDTH = 0.01  # of the MACs: two candidates this close whose latencies straddle the target


def _step_around(tried: Sequence[tuple[float, float]], keep: float) -> str:
    """Why no width lands near ``keep`` when the latency jumps over it (CPU kernels run channels in
    blocks and switch algorithms at some widths: results/conv_channel_latency.md); "" when the closest
    candidates either side are not that close."""
    above = [(s, r) for s, r in tried if r > keep * (1 + LATENCY_TOLERANCE)]
    below = [(s, r) for s, r in tried if r < keep * (1 - LATENCY_TOLERANCE)]
    if not above or not below:
        return ""
    (s0, r0), (s1, r1) = max(above), min(below)  # the most pruned above, the least pruned below
    if not 0 < s1 - s0 <= STEP_WIDTH:
        return ""
    return (
        f"the latency steps from keep {r0:.2f} to {r1:.2f} between {s0:.3f} and {s1:.3f} of the MACs saved "
        "(CPU kernels run channels in blocks): no width lands near this target; aim either side of the "
        "step, or set round_to to the kernels' block (e.g. 16)"
    )


def _floor_macs_saved(model: nn.Module, groups: Sequence[Group], cfg: Any, example_inputs: Any) -> float:
    """The largest MAC fraction the floors allow; min > max (a max_keep under a floor) fails here."""
    sizes = SizeModel(model, groups, example_inputs)
    floors = floor_counts(groups, cfg.min_keep_fraction, cfg.min_units, cfg.round_to, cfg.layers)
    ceiling_counts(groups, cfg.layers, cfg.round_to, floors)  # ValueError naming the layer
    # rounded down, so that a MAC plan at it is never short of its own target by rounding
    return math.floor(sizes.saved(floors, "macs") * 1e4) / 1e4


def _stable(latency_of: LatencyOf, plan: Plan | None, limit: float, what: str, tries: int = RETRIES) -> dict:
    """A measurement whose median is known within ``limit``, measured up to ``tries`` times (the load of
    a shared machine comes and goes); ValueError (one line, with the spread) when none is."""
    for i in range(tries):
        stats = latency_of(plan)
        try:
            check_stable(stats, limit, what)
            return stats
        except ValueError:
            if i == tries - 1:
                raise
    raise AssertionError("unreachable")


def _short(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("median_ms", "p25_ms", "p75_ms", "spread", "repeats", "threads")
    return {k: stats[k] for k in keys if k in stats} | {"median_error": median_error(stats)}


def plan_for_latency(
    model: nn.Module,
    groups: Sequence[Group],
    target: Target,
    config: Any,  # the planner's PlannerConfig (its floors and layer limits bound the search)
    latency_of: LatencyOf,
    plan_macs: Callable[[float], Plan],
    example_inputs: Any,
    error_limit: float = MEDIAN_ERROR_LIMIT,
) -> Plan:
    """A plan whose pruned model's median latency is within 5 % of ``target.keep`` of the dense one's.

    ``plan_macs(s)`` is the configured planner's plan saving ``s`` of the MACs (``make_plan`` passes
    it, with the planner's ``config`` whose floors bound the search). ``plan.target`` is the latency
    target; ``plan.extra["latency"]`` records the dense and achieved medians with their spread, the
    target in milliseconds, every candidate tried and whether the result is within tolerance
    (re-measured once more, dense then pruned, after the search). A target the floors cannot reach
    raises; a result that noise or coarse units leave outside 5 % warns. It measures, so call it on
    one process: under several, ``prunekit.task`` plans on rank 0 and broadcasts the plan.
    """
    if target.metric != "latency":
        raise ValueError(f"plan_for_latency plans a latency target, got metric '{target.metric}'")
    if example_inputs is None:
        raise ValueError("a latency target needs example_inputs (a batch of model inputs) to count MACs")
    top = _floor_macs_saved(model, groups, config, example_inputs)  # min > max fails before measuring
    dense = latency_of(None)
    check_stable(dense, error_limit, "the dense model")  # before any pruning
    keep, dense_ms = target.keep, dense["median_ms"]
    plans: dict[float, tuple[Plan, dict[str, Any], dict[str, Any]]] = {}  # s -> plan, its stats, dense's

    def ratio_at(s: float) -> float:
        s = round(s, 4)  # one candidate per 0.01 % of MACs: repeated tries reuse their plan
        if s not in plans:
            with warnings.catch_warnings():  # the MAC target is a means here, its 1 % is not the goal
                warnings.simplefilter("ignore")
                plan = plan_macs(s)
            # each candidate against the dense model timed just before it: a shared machine's speed
            # drifts within one search (the dense median halved in one here), a ratio to a measurement
            # minutes old carries that drift; the first candidate follows the first dense measurement
            ref = (
                dense
                if not plans
                else _stable(latency_of, None, error_limit, "the dense model (re-measured)")
            )
            plans[s] = (
                plan,
                _stable(latency_of, plan, error_limit, f"the candidate at {s:.3f} MACs saved"),
                ref,
            )
        _, stats, ref = plans[s]
        return stats["median_ms"] / ref["median_ms"]

    tried = search_macs_saved(ratio_at, keep, top)
    if tried[0][1] > keep * (1 + LATENCY_TOLERANCE):
        raise ValueError(
            f"latency target keep {keep:.2f} ({keep * dense_ms:.3f} of {dense_ms:.3f} ms) cannot be met: "
            f"at the per-layer minimum keep ({top:.3f} of MACs saved) the model still takes "
            f"{tried[0][1] * dense_ms:.3f} ms (keep {tried[0][1]:.2f}); lower min_keep_fraction or the "
            "layer limits, raise the target, or raise evaluate.latency_batch_size (a small batch is "
            "overhead-bound on CPU)"
        )
    best_s, best_r = min(tried, key=lambda t: (abs(t[1] / keep - 1), t[0]))
    plan = plans[round(best_s, 4)][0]
    # fresh, back to back: drift since the search shows here
    dense_again = _stable(latency_of, None, error_limit, "the dense model (re-measured)")
    final = _stable(latency_of, plan, error_limit, "the chosen plan (re-measured)")
    achieved = final["median_ms"] / dense_again["median_ms"]
    within = abs(achieved / keep - 1) <= LATENCY_TOLERANCE
    if not within:
        if abs(best_r / keep - 1) <= LATENCY_TOLERANCE:
            why = (
                f"the re-measurement moved (spread {final['spread']:.2f}): raise evaluate.latency_repeats "
                "or measure on a quieter machine"
            )
        else:
            why = _step_around(tried, keep) or (
                "no candidate came within 5 % (its units are coarse near this latency): try round_to 1 or "
                "another planner"
            )
        warnings.warn(
            f"latency target keep {keep:.3f}: the plan keeps {achieved:.3f} of the dense latency when "
            f"re-measured (searched: {best_r:.3f}), more than 5 % off; {why}",
            stacklevel=2,
        )
    plan.target = target.to_dict()
    plan.extra["achieved"] |= {
        "latency_ms": final["median_ms"],
        "dense_latency_ms": dense_again["median_ms"],
        "latency_saved": 1.0 - achieved,
        "within_tolerance": within,
    }
    plan.extra["latency"] = {
        "target_keep": keep,
        "target_ms": keep * dense_again["median_ms"],
        "tolerance": LATENCY_TOLERANCE,
        "achieved_keep": achieved,
        "within_tolerance": within,
        "dense": _short(dense),
        "dense_remeasured": _short(dense_again),
        "pruned": _short(final),
        "error_limit": error_limit,
        "macs_saved_max": top,
        "search": [
            {
                "macs_saved": s,
                "latency_keep": r,
                **_short(plans[round(s, 4)][1]),
                "dense_ms": plans[round(s, 4)][2]["median_ms"],
            }
            for s, r in tried
        ],
    }
    return plan
