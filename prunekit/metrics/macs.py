"""Multiply-accumulate counts of a model, per example.

The counting rules and the hooked forward pass are :mod:`prunekit.structure.macs`, the one MAC counter
of prunekit (its docstring lists what is counted): the planners predict pruned sizes from the same
terms, so the MACs a plan promises are the MACs measured here after surgery.
"""

from __future__ import annotations

from torch import nn

from prunekit.batch import Inputs
from prunekit.structure.macs import checked_inputs, count_mac_terms

__all__ = ["checked_inputs", "count_macs", "mac_breakdown"]


def mac_breakdown(model: nn.Module, example_inputs: Inputs) -> dict[str, int]:
    """MACs per example of every counted module, by module name (attention matmuls as
    ``"<module>:attention"``), in the order the modules ran.

    The inputs are moved to the model's device; ValueError for inputs that are not a (dict of) tensor(s)
    or hold no examples."""
    return {t.module: t.total // t.batch for t in count_mac_terms(model, example_inputs)}


def count_macs(model: nn.Module, example_inputs: Inputs) -> int:
    """Multiply-accumulates of one forward pass, per example of ``example_inputs``
    (rules: :mod:`prunekit.structure.macs`)."""
    return sum(mac_breakdown(model, example_inputs).values())
