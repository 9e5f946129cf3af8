"""prunekit's own vocabulary for structured pruning: groups of parameter slices removed together.

Nothing here imports torch_pruning: estimators, planners and surgery speak these terms, and only
:mod:`prunekit.structure.graph` translates torch-pruning's dependency graph into them.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # parameters of a norm over all of a layer's heads (OLMo2's q_norm): after a cut, surgery multiplies
    # their kept entries by sqrt(before / kept), so the norm's mean of squares is the dense model's
    rescale: tuple[str, ...] = ()
