"""What a plan must achieve: the fraction of the model's parameters or MACs to save."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRICS = ("params", "macs")
TOLERANCE = 0.01  # a target is met when the saved fraction is within 1 % of the model total of it


@dataclass(frozen=True)
class Target:
    """Save ``saved`` (a fraction in [0, 1)) of the model's ``metric``: ``"params"`` or ``"macs"``."""

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

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "saved": self.saved}
