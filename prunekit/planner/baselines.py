"""The baseline planners. They share everything (floors, rounding, exact sizes, target search) but the
scores: ``uniform`` keeps the same fraction of every group and picks units by a within-group score;
``global_magnitude``, ``global_taylor``, ``lamp`` and ``random`` rank all units of all groups together and
remove the lowest until the target is met.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from prunekit.planner.allocate import global_counts, keep_indices, layer_normalised, uniform_counts
from prunekit.planner.importance import get_criterion, unit_scores
from prunekit.planner.registry import PlanContext, PlannerConfig, register_planner

Keep = dict[str, list[int]]


def _scores(ctx: PlanContext, criterion: str) -> dict[str, Tensor]:
    c = ctx.config
    return unit_scores(ctx.model, ctx.groups, ctx.batches, criterion, num_batches=c.num_batches, seed=c.seed)


def _keep(ctx: PlanContext, scores: Mapping[str, Tensor], counts: Mapping[str, int]) -> Keep:
    return {g.name: keep_indices(scores[g.name], counts[g.name]) for g in ctx.groups}


def _global(
    ctx: PlanContext, scores: Mapping[str, Tensor], note: dict[str, Any]
) -> tuple[Keep, dict[str, Any]]:
    counts = global_counts(
        ctx.groups, ctx.sizes, ctx.target, ctx.floors(), ctx.config.round_to, scores, ctx.ceilings()
    )
    return _keep(ctx, scores, counts), note


@dataclass(frozen=True)
class UniformConfig(PlannerConfig):
    """Same keep fraction in every group; units chosen by ``importance`` (any criterion of
    :func:`prunekit.planner.importance.unit_scores`; ``taylor`` / ``hessian`` need batches)."""

    importance: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_criterion(self.importance)  # an unknown name fails here, listing the known ones


def uniform(ctx: PlanContext) -> tuple[Keep, dict[str, Any]]:
    cfg: UniformConfig = ctx.config  # type: ignore[assignment]
    scores = _scores(ctx, cfg.importance)
    counts = uniform_counts(
        ctx.groups, ctx.sizes, ctx.target, ctx.floors(), cfg.round_to, ceilings=ctx.ceilings()
    )
    fractions = [counts[g.name] / g.num_units for g in ctx.groups]
    return _keep(ctx, scores, counts), {"importance": cfg.importance, "keep_fraction": min(fractions)}


@dataclass(frozen=True)
class GlobalMagnitudeConfig(PlannerConfig):
    """Global ranking of units by their magnitude (``l1`` or ``l2``) divided by their layer's mean."""

    norm: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in ("l1", "l2"):
            raise ValueError(f"norm='{self.norm}' is not a magnitude; choose l1 or l2")


def global_magnitude(ctx: PlanContext) -> tuple[Keep, dict[str, Any]]:
    norm = ctx.config.norm  # type: ignore[attr-defined]
    return _global(
        ctx, layer_normalised(_scores(ctx, norm)), {"importance": norm, "normalised": "layer_mean"}
    )


@dataclass(frozen=True)
class GlobalTaylorConfig(PlannerConfig):
    """Global ranking of units by first-order Taylor scores (needs batches) divided by their layer's mean."""


def global_taylor(ctx: PlanContext) -> tuple[Keep, dict[str, Any]]:
    if ctx.batches is None:
        raise ValueError(
            "planner 'global_taylor' needs data: pass batches=[(inputs, labels), ...] to make_plan"
        )
    return _global(
        ctx, layer_normalised(_scores(ctx, "taylor")), {"importance": "taylor", "normalised": "layer_mean"}
    )


@dataclass(frozen=True)
class LampConfig(PlannerConfig):
    """Global ranking by LAMP scores of the units' magnitudes (already comparable across layers)."""


def lamp(ctx: PlanContext) -> tuple[Keep, dict[str, Any]]:
    return _global(ctx, _scores(ctx, "lamp"), {"importance": "lamp"})


@dataclass(frozen=True)
class RandomConfig(PlannerConfig):
    """Global ranking by seeded random scores: the control every criterion has to beat."""


def random(ctx: PlanContext) -> tuple[Keep, dict[str, Any]]:
    return _global(ctx, _scores(ctx, "random"), {"importance": "random"})


register_planner("uniform", UniformConfig, uniform)
register_planner("global_magnitude", GlobalMagnitudeConfig, global_magnitude)
register_planner("global_taylor", GlobalTaylorConfig, global_taylor)
register_planner("lamp", LampConfig, lamp)
register_planner("random", RandomConfig, random)
