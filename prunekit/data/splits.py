"""`DataSplits`: train / validation / test of one dataset, as HF Datasets and as fast torch loaders.

The rows live once, as numpy arrays; ``.train`` / ``.validation`` / ``.test`` wrap them in a
``datasets.Dataset`` on first use (zero-copy Arrow, built lazily so runs that only need loaders never pay
for it), and ``.loader()`` gathers whole batches by index instead of converting rows one by one
(one pass over the 4000 MNIST-1D training rows takes a few milliseconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from prunekit.batch import Batch, Inputs
from prunekit.data.arrays import SplitArrays
from prunekit.data.source import Kind

SPLITS = ("train", "validation", "test")


def _gather(x: np.ndarray, idx: np.ndarray | int) -> torch.Tensor:
    # numpy fancy indexing is single-threaded: torch's index_select woke its thread pool for every batch and
    # took ~30 ms per MNIST-1D batch on a busy 2-core machine (numpy: ~0.1 ms).
    return torch.from_numpy(np.ascontiguousarray(x[idx]))


class _Rows(Dataset):
    """A map-style torch dataset that answers a whole list of indices at once (``__getitems__``)."""

    def __init__(self, rows: SplitArrays):
        self.inputs = rows.inputs
        self.labels = rows.labels

    def __len__(self) -> int:
        return len(self.labels)

    def _take(self, idx: np.ndarray | int) -> Batch:
        x = self.inputs
        inputs: Inputs = (
            {k: _gather(v, idx) for k, v in x.items()} if isinstance(x, Mapping) else _gather(x, idx)
        )
        return inputs, _gather(self.labels, idx)

    def __getitem__(self, index: int) -> Batch:
        return self._take(int(index))

    def __getitems__(self, indices: list[int]) -> Batch:
        return self._take(np.asarray(indices, dtype=np.int64))


def _as_batch(batch: Batch) -> Batch:
    """Collate: ``__getitems__`` already returned the batch; a module-level function so it pickles."""
    return batch


class DataSplits:
    """Train / validation / test splits of one dataset plus what models need to know about it."""

    def __init__(
        self,
        name: str,
        kind: Kind,
        splits: dict[str, SplitArrays],
        num_classes: int,
        input_shape: tuple[int, ...],
        class_names: list[str] | None = None,
        info: dict[str, Any] | None = None,
    ):
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise ValueError(f"dataset '{name}': missing splits {missing}")
        self.name = name
        self.kind: Kind = kind
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.class_names = list(class_names) if class_names is not None else None
        self.info = dict(info or {})
        self._arrays = splits
        self._datasets: dict[str, Any] = {}

    # --- sizes and raw access -------------------------------------------------------------------
    @property
    def n_train(self) -> int:
        return len(self._arrays["train"])

    def size(self, split: str) -> int:
        return len(self._arrays[self._check(split)])

    def arrays(self, split: str) -> SplitArrays:
        """The numpy rows of ``split`` (shared, not copied: do not modify in place)."""
        return self._arrays[self._check(split)]

    def labels(self, split: str) -> np.ndarray:
        return self._arrays[self._check(split)].labels

    def rows(self, split: str) -> np.ndarray:
        """Source row ids of ``split`` (the source's train rows numbered first, then its test rows)."""
        return self._arrays[self._check(split)].rows

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for reports."""
        return {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "class_names": self.class_names,
            "sizes": {s: self.size(s) for s in SPLITS},
            **self.info,
        }

    # --- HF Dataset views -------------------------------------------------------------------------
    @property
    def train(self) -> Any:
        return self.dataset("train")

    @property
    def validation(self) -> Any:
        return self.dataset("validation")

    @property
    def test(self) -> Any:
        return self.dataset("test")

    def dataset(self, split: str) -> Any:
        """``split`` as a ``datasets.Dataset`` with columns ``inputs`` (or the tokenizer's) and ``labels``."""
        split = self._check(split)
        if split not in self._datasets:
            from prunekit.data.arrow import to_dataset

            self._datasets[split] = to_dataset(self._arrays[split], self.class_names)
        return self._datasets[split]

    # --- loaders ------------------------------------------------------------------------------
    def loader(
        self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> DataLoader:
        """A DataLoader over ``split`` yielding ``(inputs, labels)`` batches (see prunekit.batch).

        Shuffling uses its own seeded generator: the same seed gives the same order, and each new pass
        over the loader draws the next permutation from it.
        """
        split = self._check(split)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rows = _Rows(self._arrays[split])
        shuffle = shuffle and len(rows) > 0  # torch's RandomSampler rejects an empty split
        generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return DataLoader(
            rows,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            collate_fn=_as_batch,
            num_workers=0,
        )

    def _check(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        return split

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.size(s)}" for s in SPLITS)
        return (
            f"DataSplits(name={self.name!r}, kind={self.kind!r}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}, {sizes})"
        )
