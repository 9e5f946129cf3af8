"""The vocabulary every stage speaks: groups, plans, exact sizes, masking and transformer blocks.

A :class:`Group` is a set of parameter slices removed together, made of interchangeable units; a
:class:`Plan` is which units of each group survive. :func:`find_groups` finds a model's groups
(transformer blocks are described directly, CNNs and MLPs traced by torch-pruning in ``graph.py``, the
only module of prunekit that imports torch_pruning). Theory, planner and pruning all build on this
package and nothing here imports them.
"""

from .find import find_groups, round_keep
from .group import Group, ParamSlice
from .masking import mask_groups
from .plan import Plan, validate_plan
from .sizes import remaining_size
from .timeout import GraphTimeoutError

__all__ = [
    "Group",
    "GraphTimeoutError",
    "ParamSlice",
    "Plan",
    "find_groups",
    "mask_groups",
    "remaining_size",
    "round_keep",
    "validate_plan",
]
