"""prunekit's own vocabulary for structured pruning: groups and plans.

Nothing here imports torch_pruning: estimators and planners speak these terms, and only the adapter
modules of this package translate them to torch-pruning's dependency graph.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ParamSlice:
    """The entries of one parameter (or buffer) that belong to the units of a group.

    ``index[u]`` lists the indices along ``dim`` owned by unit ``u`` (e.g. one row of a conv weight per
    output channel, ``head_dim`` rows of a query projection per attention head).
    """

    param: str  # fully qualified name, as in model.named_parameters() / named_buffers()
    dim: int
    index: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Group:
    """A set of parameter slices removed together, made of ``num_units`` interchangeable units."""

    name: str  # stable and readable, e.g. "layer1.0.conv1:out", "encoder.layer.3.attention:heads"
    kind: str  # "channel" | "head" | "neuron" | "kv_head"
    layer: str  # the module whose output units these are
    num_units: int
    slices: tuple[ParamSlice, ...]
    params_per_unit: int  # parameters removed with one unit (its own slices; overlaps not subtracted)
    macs_per_unit: int  # MACs removed with one unit at the example input size
    min_units: int = 1  # a layer is never emptied unless the user allows it


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
