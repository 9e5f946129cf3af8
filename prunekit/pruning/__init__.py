"""What changes a model: applying plans (surgery), HF patching after surgery, and checkpoints.

The vocabulary these act on (groups, plans, sizes, masking) lives in :mod:`prunekit.structure`.
"""

from .apply import apply_plan_, compose_plans
from .checkpoint import checkpoint_info, load, save

__all__ = [
    "apply_plan_",
    "checkpoint_info",
    "compose_plans",
    "load",
    "save",
]
