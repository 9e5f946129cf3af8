"""Planners by name: each is a small config dataclass plus one function (the peft pattern).

``make_plan(model, groups, target, config)`` validates everything, runs the planner's function, and wraps
its answer (the kept unit indices of each group) into a :class:`~prunekit.structure.plan.Plan` carrying the
target, the planner's name and config, and the exact size it achieves.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.batch import Batch
from prunekit.planner.allocate import SizeModel, ceiling_counts, floor_counts
from prunekit.planner.target import TOLERANCE, LayerLimit, Target
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
    layers: tuple[LayerLimit, ...] = ()  # per-layer min / max keep fractions by name pattern

    def __post_init__(self) -> None:
        limits = tuple(r if isinstance(r, LayerLimit) else LayerLimit(**r) for r in self.layers)
        object.__setattr__(self, "layers", limits)
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
    data: Any = None  # the training data (e.g. DataSplits) for planners that estimate; else None

    def floors(self) -> dict[str, int]:
        c = self.config
        return floor_counts(self.groups, c.min_keep_fraction, c.min_units, c.round_to, c.layers)

    def ceilings(self) -> dict[str, int]:
        return ceiling_counts(self.groups, self.config.layers, self.config.round_to, self.floors())


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


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _coerce(planner: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as the option's annotated type (YAML lists become tuples); ValueError naming key and value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(planner, key, value, arg)
            except ValueError:
                pass
    elif origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce(planner, key, v, args[0]) for v in value)
    elif dataclasses.is_dataclass(hint) and isinstance(value, (Mapping, hint)):
        return value if isinstance(value, hint) else hint(**value)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (int, str, bool) and type(value) is hint:
        return value
    elif hint is Any:
        return value
    raise ValueError(
        f"planner '{planner}': option {key}={value!r} has the wrong type; it must be {_type_name(hint)}"
    )


def planner_config(name: str, **options: Any) -> PlannerConfig:
    """The config of planner ``name`` with ``options`` set; an unknown option or a wrong type is an error."""
    spec = get_planner(name)
    hints = typing.get_type_hints(spec.config_cls)
    allowed = [f.name for f in dataclasses.fields(spec.config_cls)]
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"planner '{name}' has no option '{key}' (given {options[key]!r}); "
                f"allowed options: {', '.join(allowed)}"
            )
    typed = {k: _coerce(name, k, v, hints[k]) for k, v in options.items()}
    try:
        return spec.config_cls(**typed)
    except TypeError as err:  # a LayerLimit mapping with unknown keys
        raise ValueError(f"planner '{name}': {err}; check its options") from None
    except ValueError as err:  # the config's own check, maybe in a plugin: bad input, not a bug
        raise ValueError(str(err)) from None


def from_prune_config(prune: Any, seed: int = 0) -> PlannerConfig:
    """The planner config named by a run config's ``prune`` section (``prunekit.config.PruneConfig``).

    Shared settings (``min_keep_fraction``, ``round_to``, ``importance_batches``, ``layers``) come from
    the section, the planner's own from ``planner_options``; a key given in both places is an error.
    ``importance`` goes only to planners that choose units by a configurable criterion; given to one
    that ranks by its own scores it is an error, not silently ignored.
    """
    spec = get_planner(prune.planner)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    given = set(getattr(prune, "model_fields_set", set()))
    shared: dict[str, Any] = {
        "min_keep_fraction": prune.min_keep_fraction,
        "round_to": prune.round_to,
        "num_batches": prune.importance_batches,
        "seed": seed,
        "layers": tuple(LayerLimit(r.pattern, r.min_keep, r.max_keep) for r in getattr(prune, "layers", [])),
    }
    own = dict(getattr(prune, "planner_options", {}) or {})
    for key in own:
        if key in shared and {"num_batches": "importance_batches"}.get(key, key) in given:
            raise ValueError(f"'{key}' is set both in prune and in prune.planner_options; keep one of them")
    if prune.importance is not None:
        if "importance" not in fields:
            raise ValueError(
                f"planner '{prune.planner}' ranks units by its own scores and takes no importance "
                f"(given '{prune.importance}'); remove prune.importance or use a planner that takes one"
            )
        if "importance" in own:
            raise ValueError("'importance' is set both in prune and in prune.planner_options; keep one")
        own["importance"] = prune.importance
    # a shared setting left at its default in the section leaves the planner's own default in place
    section_key = {"num_batches": "importance_batches"}
    shared = {k: v for k, v in shared.items() if k == "seed" or section_key.get(k, k) in given}
    options = {k: v for k, v in shared.items() if k in fields} | own
    return planner_config(prune.planner, **options)


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
            raise ValueError(
                f"target has unknown keys {unknown}; give metric ('params', 'macs' or 'latency') and saved"
            )
        return Target(**target)
    raise ValueError(f"target must be a Target(metric=..., saved=...), got {type(target).__name__}")


def make_plan(
    model: nn.Module,
    groups: Sequence[Group],
    target: Target | Mapping[str, Any],
    config: PlannerConfig | str | None = None,
    batches: Iterable[Batch] | None = None,
    example_inputs: Any = None,
    data: Any = None,
    latency_of: Callable[[Plan | None], dict[str, Any]] | None = None,
) -> Plan:
    """Plan which units of each group to keep so that ``target`` is met within 1 % of the model total.

    A ``latency`` target (met within 5 %) needs ``latency_of``: plan (None: dense) -> the measured
    latency of the pruned model (:func:`prunekit.planner.latency.plan_for_latency`).

    ``config`` is a planner name or a planner's config (default: ``uniform``). ``example_inputs`` (a
    batch of model inputs) is needed to count MACs and parameters exactly. ``plan.extra["achieved"]``
    reports the resulting params / MACs and the fractions saved.
    """
    target = _as_target(target)
    if target.metric == "latency":  # measured, not counted: a search over MAC targets
        from prunekit.planner.latency import plan_for_latency

        if latency_of is None:
            raise ValueError("a latency target needs latency_of=(plan or None -> measure_latency stats)")
        cfg = _resolve(config)[1]

        def plan_macs(saved: float) -> Plan:
            return make_plan(model, groups, Target("macs", saved), cfg, batches, example_inputs, data)

        return plan_for_latency(model, groups, target, cfg, latency_of, plan_macs, example_inputs)
    spec, cfg = _resolve(config)
    if not groups:
        raise ValueError("the model has no prunable groups (all ignored?): nothing to plan")
    if example_inputs is None:
        raise ValueError("make_plan needs example_inputs (a batch of model inputs) to count params and MACs")
    sizes = SizeModel(model, groups, example_inputs)
    ctx = PlanContext(model, groups, target, batches, sizes, cfg, data)
    ctx.ceilings()  # a max_keep below a group's floor fails before any scoring
    keep, note = spec.fn(ctx)
    predicted_gap = note.pop("predicted_gap", None)
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
        predicted_gap=None if predicted_gap is None else float(predicted_gap),
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
    plan.extra = {"achieved": achieved, "config": json.loads(json.dumps(dataclasses.asdict(cfg))), **note}
    return plan
