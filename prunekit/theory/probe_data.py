"""The inputs the estimators see: a class-balanced probe set and the intrinsic-dimension sample.

Both come from the train split only (the test split is for the final evaluation alone), either from a
:class:`prunekit.data.DataSplits` or from a stream of ``(inputs, labels)`` batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.batch import Batch, batch_size_of, concat_inputs, slice_inputs


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices that cycle through the classes (each shuffled): every prefix is as class-balanced as it can be."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    depth = max(len(p) for p in per_class)
    order = [p[i] for i in range(depth) for p in per_class if i < len(p)]
    return np.asarray(order, dtype=np.int64)


def train_rows(data: Any, idx: np.ndarray) -> Batch:
    """Rows ``idx`` of a DataSplits' train split as a batch (inputs as tensors, labels)."""
    x = data.arrays("train").inputs
    y = torch.from_numpy(data.labels("train")[idx])
    if isinstance(x, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in x.items()}, y
    return torch.from_numpy(np.ascontiguousarray(x[idx])), y


def is_splits(data: Any) -> bool:
    """Whether ``data`` is a DataSplits-like object (rather than an iterable of batches)."""
    return all(hasattr(data, a) for a in ("arrays", "labels", "n_train"))


def probe_from_batches(batches: Iterable[Batch], num: int, seed: int) -> Batch:
    """A class-balanced probe set from a stream: scan up to 4·num examples, then cycle through classes."""
    xs, ys, seen = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y.detach().cpu())
        seen += batch_size_of(x)
        if seen >= 4 * num:
            break
    if not xs:
        raise ValueError("the data yields no batches: pass a non-empty iterable of (inputs, labels)")
    x_all, y_all = concat_inputs(xs), torch.cat(ys)
    idx = balanced_order(y_all.numpy(), seed)[:num]
    t = torch.as_tensor(idx, dtype=torch.long)
    return slice_inputs(x_all, t), y_all[t]


def chunks(batch: Batch, size: int) -> list[Batch]:
    """A batch cut into consecutive micro-batches of at most ``size`` samples."""
    x, y = batch
    n = batch_size_of(x)
    return [(slice_inputs(x, slice(i, i + size)), y[i : i + size]) for i in range(0, n, size)]


def id_batches(data: Any, num: int, seed: int) -> Iterator[Batch]:
    """Random training rows for the intrinsic dimension, in batches (the representation may need a forward)."""
    rng = np.random.default_rng(seed + 1)
    n = data.n_train
    idx = np.sort(rng.choice(n, size=min(num, n), replace=False))
    for i in range(0, len(idx), 256):
        yield train_rows(data, idx[i : i + 256])


def id_layer(model: nn.Module, layer: str, inputs: Any, notes: list[str]) -> str:
    """The representation d_eff is measured on; checked before any estimator runs (fail fast)."""
    if layer == "inputs" and isinstance(inputs, Mapping):
        # token ids have no useful geometry: use the encoder's mask-weighted mean token state instead
        prefix = getattr(model, "base_model_prefix", "")
        encoder = f"{prefix}.encoder" if prefix else ""
        if encoder not in dict(model.named_modules()):
            raise ValueError(
                "estimate.id_representation='inputs' needs tensor inputs; for text set it to a module name "
                "of the model, e.g. 'bert.encoder'"
            )
        notes.append(
            f"id_representation 'inputs' is undefined for token ids: used '{encoder}' (mean token state)"
        )
        return encoder
    if layer != "inputs" and layer not in dict(model.named_modules()):
        raise ValueError(
            f"estimate.id_representation={layer!r} is not a module of the model; use 'inputs' or a name "
            "from model.named_modules()"
        )
    return layer
