"""`SplitArrays`: the rows of one split as numpy arrays, the form every dataset loader produces.

Its own module so that both views of the rows, the torch loaders (splits.py) and the Arrow
``datasets.Dataset`` (arrow.py), import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class SplitArrays:
    """The rows of one split: inputs (an array, or a dict of arrays for tokenized text) and labels.

    Text splits may be given as raw ``text`` plus an ``encode`` function instead of ``inputs``: they are
    then tokenized on first access, so asking for split sizes or labels never runs the tokenizer.
    """

    def __init__(
        self,
        inputs: np.ndarray | dict[str, np.ndarray] | None,
        labels: np.ndarray,
        text: np.ndarray | None = None,
        encode: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
        rows: np.ndarray | None = None,
    ):
        if inputs is None and (text is None or encode is None):
            raise ValueError("SplitArrays needs inputs, or text together with an encode function")
        self._inputs = inputs
        self._encode = encode
        self.labels = np.asarray(labels, dtype=np.int64)
        self.text = text  # raw strings of a text split, kept for inspection in the Dataset view
        # Row ids in the source (its train rows, then its test rows): provenance, and overlap checks.
        self.rows = (
            np.arange(len(self.labels), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        )

    @property
    def inputs(self) -> np.ndarray | dict[str, np.ndarray]:
        if self._inputs is None:
            assert self._encode is not None and self.text is not None  # guaranteed by __init__
            self._inputs = self._encode(self.text)
            self._encode = None
        return self._inputs

    def __len__(self) -> int:
        return len(self.labels)
