"""Plans: which units of each group to keep. Pure data, JSON-serialisable, checked against groups.

A plan is what the planner hands to surgery; :func:`validate_plan` is the check both sides share.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .group import Group

PLAN_FORMAT_VERSION = 1


@dataclass
class Plan:
    """What to keep: for each group, the sorted unit indices that survive. Pure data, JSON-serialisable."""

    keep: dict[str, list[int]]
    num_units: dict[str, int]  # each group's size in the model the plan was made for
    target: dict[str, Any] = field(default_factory=dict)  # e.g. {"metric": "params", "saved": 0.5}
    planner: str = "manual"
    predicted_gap: float | None = None
    round_to: int = 1
    format_version: int = PLAN_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if not isinstance(d, dict) or not all(isinstance(d.get(k), dict) for k in ("keep", "num_units")):
            raise ValueError(
                "a plan needs 'keep' and 'num_units' mappings keyed by group name; see Plan.to_dict()"
            )
        version = int(d.get("format_version", 0))
        if version > PLAN_FORMAT_VERSION:
            raise ValueError(
                f"plan format version {version} is newer than this prunekit understands "
                f"({PLAN_FORMAT_VERSION}); upgrade prunekit"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown plan fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        d = dict(d)
        try:
            d["keep"] = {k: [int(i) for i in v] for k, v in d["keep"].items()}
            d["num_units"] = {k: int(v) for k, v in d["num_units"].items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"plan 'keep' must map group names to lists of integers and 'num_units' to integers ({exc})"
            ) from None
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


def validate_plan(groups: Sequence[Group], plan: Plan) -> None:
    """Raise ValueError naming the first group the plan gets wrong; change nothing."""
    by_name = {g.name: g for g in groups}
    for name in list(plan.num_units) + list(plan.keep):
        if name not in by_name:
            near = sorted(by_name)[:3]
            raise ValueError(
                f"plan names group {name!r}, which this model does not have (a plan for another model, or "
                f"groups found with other ignore patterns?); this model's groups start {near}"
            )
    round_to = plan.round_to
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise ValueError(f"plan.round_to must be an integer >= 1, got {round_to!r}")
    for name, n in plan.num_units.items():  # every group the plan sizes, pruned or not
        if n != by_name[name].num_units:
            raise ValueError(
                f"group {name!r} has {by_name[name].num_units} units in this model but {n} in the plan: "
                f"the plan was made for another model (or an already pruned one)"
            )
    for name, keep in plan.keep.items():
        if name not in plan.num_units:
            raise ValueError(f"plan.num_units has no entry for group {name!r}; the plan is incomplete")
        _check_keep(name, keep, by_name[name], round_to)


def _check_keep(name: str, keep: object, g: Group, round_to: int) -> None:
    if not isinstance(keep, (list, tuple)):
        raise ValueError(f"plan.keep[{name!r}] must be a list of unit indices, got {type(keep).__name__}")
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in keep):
        raise ValueError(f"plan.keep[{name!r}] must hold integer unit indices")
    keep = [int(i) for i in keep]
    bad = [i for i in keep if i < 0 or i >= g.num_units]
    if bad:
        raise ValueError(f"plan.keep[{name!r}] has indices {bad[:5]} outside [0, {g.num_units})")
    if any(a >= b for a, b in zip(keep, keep[1:], strict=False)):
        raise ValueError(f"plan.keep[{name!r}] must be sorted without duplicates, got {keep[:10]}...")
    if len(keep) < g.min_units:
        raise ValueError(
            f"plan.keep[{name!r}] keeps {len(keep)} units but the group needs at least {g.min_units}; "
            f"keep more or add the layer to ignore"
        )
    if len(keep) % round_to and len(keep) != g.num_units:
        raise ValueError(
            f"plan.keep[{name!r}] keeps {len(keep)} units, not a multiple of plan.round_to={round_to}; "
            f"keep a multiple (or all {g.num_units}) or lower round_to"
        )
