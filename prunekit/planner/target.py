"""What a plan must achieve: the fraction of the model's parameters, MACs or measured CPU latency to save.

Params and MACs are counted exactly, so a plan meets them within 1 % of the model total. Latency is
measured (medians over repeats, :mod:`prunekit.metrics.latency`), so it is met within 5 % of the target
latency, and its measured spread is reported with it (:mod:`prunekit.planner.latency`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRICS = ("params", "macs", "latency")
TOLERANCE = 0.01  # a target is met when the saved fraction is within 1 % of the model total of it
# a latency target is met when the measured median is within 5 % of the target latency (relative): timing
# on a shared CPU moves by a few percent between repeats, exact counts do not
LATENCY_TOLERANCE = 0.05


@dataclass(frozen=True)
class Target:
    """Save ``saved`` (a fraction in [0, 1)) of the model's ``metric``: ``"params"``, ``"macs"`` or
    ``"latency"`` (the median CPU latency of a forward pass: keep ``1 - saved`` of the dense model's)."""

    metric: str = "params"
    saved: float = 0.5

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown target metric '{self.metric}'; choose one of {', '.join(METRICS)}")
        if isinstance(self.saved, bool) or not isinstance(self.saved, (int, float)):
            raise ValueError(f"target saved={self.saved!r} must be a number in [0, 1), e.g. 0.5")
        if not 0.0 <= float(self.saved) < 1.0:
            raise ValueError(
                f"target saved={self.saved} is outside [0, 1): it is the fraction of {self.metric} removed"
            )
        object.__setattr__(self, "saved", float(self.saved))

    @property
    def keep(self) -> float:
        """The fraction of the dense model's ``metric`` that remains."""
        return 1.0 - self.saved

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "saved": self.saved}


@dataclass(frozen=True)
class LayerLimit:
    """Keep between ``min_keep`` and ``max_keep`` of the units of every group whose layer (or group name)
    matches ``pattern``: an exact name, a dotted suffix (``conv1`` matches ``features.conv1``) or a
    shell-style wildcard (``layer*.conv2``), as peft's ``target_modules`` matches modules."""

    pattern: str
    min_keep: float = 0.0
    max_keep: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"layer pattern {self.pattern!r} must be a non-empty string, e.g. 'features.0'")
        for name in ("min_keep", "max_keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"layer '{self.pattern}': {name}={v!r} must be a keep fraction in [0, 1]")
        if self.min_keep > self.max_keep:
            raise ValueError(
                f"layer '{self.pattern}': min_keep={self.min_keep} > max_keep={self.max_keep}; swap them"
            )

    def matches(self, *names: str) -> bool:
        from fnmatch import fnmatchcase

        p = self.pattern
        return any(n == p or n.endswith("." + p) or fnmatchcase(n, p) for n in names)
