"""Planning: which units of each group to keep so that a size target is met.

``make_plan(model, groups, Target("params", 0.5), "uniform", example_inputs=x) -> Plan``. Planners are
registered by name with a small config dataclass each (:func:`register_planner`); the baselines are
``uniform``, ``global_magnitude``, ``global_taylor``, ``lamp`` and ``random``; the theory-guided
``theory`` planner and its ablations ``loss_sensitivity`` and ``gap_sensitivity`` allocate widths from
sensitivity curves (:mod:`prunekit.planner.theory`).
"""

from __future__ import annotations

import prunekit.planner.lm_importance  # noqa: F401  (registers the lm_taylor and wanda criteria)
from prunekit.planner.baselines import (
    GlobalMagnitudeConfig,
    GlobalTaylorConfig,
    LampConfig,
    RandomConfig,
    UniformConfig,
)
from prunekit.planner.registry import (
    PlanContext,
    PlannerConfig,
    from_prune_config,
    get_planner,
    known_planners,
    make_plan,
    planner_config,
    register_planner,
)
from prunekit.planner.target import LayerLimit, Target
from prunekit.planner.theory import (
    GapSensitivityConfig,
    LossSensitivityConfig,
    SensitivityConfig,
    TheoryConfig,
)

__all__ = [
    "GapSensitivityConfig",
    "LayerLimit",
    "LossSensitivityConfig",
    "SensitivityConfig",
    "TheoryConfig",
    "GlobalMagnitudeConfig",
    "GlobalTaylorConfig",
    "LampConfig",
    "PlanContext",
    "PlannerConfig",
    "RandomConfig",
    "from_prune_config",
    "Target",
    "UniformConfig",
    "get_planner",
    "known_planners",
    "make_plan",
    "planner_config",
    "register_planner",
]
