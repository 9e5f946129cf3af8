"""Structured pruning: groups, plan application, sizes, masking, checkpoints, importance scores.

The only package of prunekit that imports torch_pruning (lazily, in graph.py, for CNNs and MLPs).
"""

from .apply import apply_plan_, compose_plans, validate_plan
from .checkpoint import checkpoint_info, load, save
from .groups import find_groups, round_keep
from .importance import unit_scores
from .masking import mask_groups
from .sizes import remaining_size
from .timeout import GraphTimeoutError
from .types import Group, ParamSlice, Plan

__all__ = [
    "Group",
    "GraphTimeoutError",
    "ParamSlice",
    "Plan",
    "apply_plan_",
    "checkpoint_info",
    "compose_plans",
    "find_groups",
    "load",
    "mask_groups",
    "remaining_size",
    "round_keep",
    "save",
    "unit_scores",
    "validate_plan",
]
