"""The one calling convention every stage shares.

A batch is ``(inputs, labels)``. ``inputs`` is either a tensor (registry models: ``model(x)``) or a
dict of tensors (HF models: ``model(**inputs)``). Estimators, training and evaluation all go through
:func:`logits_of`, so none of them needs to know which kind of model it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Union

import torch
from torch import Tensor, nn

Inputs = Union[Tensor, Mapping[str, Tensor]]  # noqa: UP007 (a runtime alias; | needs 3.10 at runtime)
Batch = tuple[Inputs, Tensor]


def logits_of(model: nn.Module, inputs: Inputs) -> Tensor:
    """Run ``model`` on ``inputs`` and return the logits, whatever the model's output type."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, Mapping) and out and isinstance(first := next(iter(out.values())), Tensor):
        return first  # a plain dict of outputs: its first, as for a tuple
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def move_to(inputs: Inputs, device: torch.device | str) -> Inputs:
    """Move a tensor or a dict of tensors to ``device``."""
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def batch_size_of(inputs: Inputs) -> int:
    if isinstance(inputs, Mapping):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


def slice_inputs(inputs: Inputs, index: slice | Tensor) -> Inputs:
    """Rows ``index`` of a tensor or of every tensor in a dict."""
    if isinstance(inputs, Mapping):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def concat_inputs(parts: list[Inputs]) -> Inputs:
    if isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def take(batches: Iterable[Batch], n: int) -> Batch:
    """The first ``n`` examples of an iterable of batches, as one batch (for probe sets)."""
    xs: list[Inputs] = []
    ys: list[Tensor] = []
    count = 0
    it: Iterator[Batch] = iter(batches)
    for x, y in it:
        xs.append(x)
        ys.append(y)
        count += batch_size_of(x)
        if count >= n:
            break
    if not xs:
        raise ValueError("no batches to take examples from: the data split is empty")
    x_all, y_all = concat_inputs(xs), torch.cat(ys)
    return slice_inputs(x_all, slice(0, n)), y_all[:n]
