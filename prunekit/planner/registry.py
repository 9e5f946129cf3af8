"""Planners by name: each is a small config dataclass plus one function (the peft pattern).

``make_plan(model, groups, target, config)`` validates everything, runs the planner's function, and wraps
its answer (the kept unit indices of each group) into a :class:`~prunekit.structure.plan.Plan` carrying the
target, the planner's name and config, and the exact size it achieves.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.batch import Batch
from prunekit.planner.allocate import SizeModel, floor_counts
from prunekit.planner.target import TOLERANCE, Target
from prunekit.structure import Group, Plan
from prunekit.structure.plan import validate_plan


@dataclass(frozen=True)
class PlannerConfig:
    """Options every planner shares. ``min_keep_fraction`` and ``min_units`` floor each group's keep count
    (a layer never collapses); ``round_to`` rounds keep counts to multiples (hardware-friendly widths);
    ``seed`` drives anything random; ``num_batches`` bounds the data used by data-driven scores."""

    min_keep_fraction: float = 0.05
    round_to: int = 1
    min_units: int = 1
    seed: int = 0
    num_batches: int = 4

    def __post_init__(self) -> None:
        frac = self.min_keep_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
            raise ValueError(f"min_keep_fraction={self.min_keep_fraction} must be in [0, 1)")
        for name in ("round_to", "min_units", "num_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")


@dataclass
class PlanContext:
    """What a planner function gets: the model, its groups, the target, data, and exact sizes."""

    model: nn.Module
    groups: Sequence[Group]
    target: Target
    batches: Iterable[Batch] | None
    sizes: SizeModel
    config: PlannerConfig

    def floors(self) -> dict[str, int]:
        c = self.config
        return floor_counts(self.groups, c.min_keep_fraction, c.min_units, c.round_to)


# a planner returns the kept unit indices of each group, and a note for plan.extra (e.g. the scores used)
PlannerFn = Callable[[PlanContext], tuple[dict[str, list[int]], dict[str, Any]]]


@dataclass(frozen=True)
class PlannerSpec:
    name: str
    config_cls: type[PlannerConfig]
    fn: PlannerFn


_PLANNERS: dict[str, PlannerSpec] = {}


def register_planner(name: str, config_cls: type[PlannerConfig], fn: PlannerFn) -> None:
    """Make a planner available by ``name``; a name (and a config class) can be registered once."""
    if name in _PLANNERS:
        raise ValueError(f"planner '{name}' is already registered; pick another name")
    if not (isinstance(config_cls, type) and issubclass(config_cls, PlannerConfig)):
        raise ValueError(
            f"planner '{name}': config_cls must be a subclass of PlannerConfig, got {config_cls!r}"
        )
    for spec in _PLANNERS.values():
        if spec.config_cls is config_cls:
            raise ValueError(
                f"config class {config_cls.__name__} already belongs to planner '{spec.name}'; "
                "give each planner its own config class"
            )
    _PLANNERS[name] = PlannerSpec(name, config_cls, fn)


def known_planners() -> list[str]:
    return sorted(_PLANNERS)


def get_planner(name: str) -> PlannerSpec:
    if name not in _PLANNERS:
        raise ValueError(f"unknown planner '{name}'; known planners: {', '.join(known_planners())}")
    return _PLANNERS[name]


def planner_config(name: str, **options: Any) -> PlannerConfig:
    """The config of planner ``name`` with ``options`` set; unknown options are an error."""
    spec = get_planner(name)
    allowed = [f.name for f in dataclasses.fields(spec.config_cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"planner '{name}' has no option(s) {unknown}; allowed options: {', '.join(allowed)}"
        )
    return spec.config_cls(**options)


def from_prune_config(prune: Any, seed: int = 0) -> PlannerConfig:
    """The planner config named by a run config's ``prune`` section (``prunekit.config.PruneConfig``).

    ``importance`` is passed on only to planners that choose units by a configurable criterion
    (``uniform``); the global baselines are defined by their own scores.
    """
    spec = get_planner(prune.planner)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    options: dict[str, Any] = {
        "min_keep_fraction": prune.min_keep_fraction,
        "round_to": prune.round_to,
        "num_batches": prune.importance_batches,
        "seed": seed,
    }
    if "importance" in fields:
        options["importance"] = prune.importance
    return planner_config(prune.planner, **{k: v for k, v in options.items() if k in fields})


def _resolve(config: PlannerConfig | str | None) -> tuple[PlannerSpec, PlannerConfig]:
    if config is None:
        config = "uniform"
    if isinstance(config, str):
        spec = get_planner(config)
        return spec, spec.config_cls()
    for spec in _PLANNERS.values():
        if type(config) is spec.config_cls:
            return spec, config
    raise ValueError(
        f"config of type {type(config).__name__} belongs to no registered planner; pass a planner name "
        f"({', '.join(known_planners())}) or its config (e.g. planner_config('uniform', round_to=8))"
    )


def _as_target(target: Target | Mapping[str, Any]) -> Target:
    if isinstance(target, Target):
        return target
    if isinstance(target, Mapping):
        unknown = sorted(set(target) - {"metric", "saved"})
        if unknown:
            raise ValueError(f"target has unknown keys {unknown}; give metric ('params' or 'macs') and saved")
        return Target(**target)
    raise ValueError(f"target must be a Target(metric=..., saved=...), got {type(target).__name__}")


def make_plan(
    model: nn.Module,
    groups: Sequence[Group],
    target: Target | Mapping[str, Any],
    config: PlannerConfig | str | None = None,
    batches: Iterable[Batch] | None = None,
    example_inputs: Any = None,
) -> Plan:
    """Plan which units of each group to keep so that ``target`` is met within 1 % of the model total.

    ``config`` is a planner name or a planner's config (default: ``uniform``). ``example_inputs`` (a
    batch of model inputs) is needed to count MACs and parameters exactly. ``plan.extra["achieved"]``
    reports the resulting params / MACs and the fractions saved.
    """
    target = _as_target(target)
    spec, cfg = _resolve(config)
    if not groups:
        raise ValueError("the model has no prunable groups (all ignored?): nothing to plan")
    if example_inputs is None:
        raise ValueError("make_plan needs example_inputs (a batch of model inputs) to count params and MACs")
    sizes = SizeModel(model, groups, example_inputs)
    ctx = PlanContext(model, groups, target, batches, sizes, cfg)
    keep, note = spec.fn(ctx)
    missing = [g.name for g in groups if g.name not in keep]
    if missing:
        raise ValueError(
            f"planner '{spec.name}' returned no keep list for groups {missing[:3]}; fix the planner"
        )
    plan = Plan(
        keep={g.name: [int(i) for i in keep[g.name]] for g in groups},
        num_units={g.name: g.num_units for g in groups},
        target=target.to_dict(),
        planner=spec.name,
        round_to=cfg.round_to,
    )
    validate_plan(groups, plan)  # a planner's bug surfaces here, not halfway through surgery
    counts = {name: len(k) for name, k in plan.keep.items()}
    achieved = sizes.report(counts)
    saved = achieved[f"{target.metric}_saved"]
    achieved["within_tolerance"] = abs(saved - target.saved) <= TOLERANCE
    if not achieved["within_tolerance"]:  # units too coarse (few heads, a large round_to) to land closer
        why = (
            f"round_to={cfg.round_to} makes its steps too coarse; lower round_to"
            if cfg.round_to > 1
            else "the groups have few units, each a large share of the model; a global planner "
            "(global_magnitude, lamp) steps more finely"
        )
        warnings.warn(
            f"planner '{spec.name}' saves {saved:.3f} of the {target.metric} instead of {target.saved:.3f}, "
            f"more than 1 % off: {why}",
            stacklevel=2,
        )
    plan.extra = {"achieved": achieved, "config": dataclasses.asdict(cfg), **note}
    return plan
