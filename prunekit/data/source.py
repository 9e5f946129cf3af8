"""What a registered dataset loader returns: the source's own splits, before prunekit splits them.

A loader only reads data; splitting, subsampling and tokenizing happen once, in :func:`load_data`, so
every source gets the same seeded, stratified train / validation / test logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["tensor", "text"]


@dataclass
class SourceData:
    """Arrays of one source.

    ``x_*`` is a float array of shape ``(N, *input_shape)`` for ``kind="tensor"`` and a 1-D object array of
    strings for ``kind="text"``; ``y_*`` holds int class ids in ``[0, num_classes)``. ``x_test`` is None
    when the source has no test split (one is then carved from train, seeded).
    """

    name: str
    kind: Kind
    x_train: np.ndarray
    y_train: np.ndarray
    num_classes: int
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] | None = None

    def validate(self) -> None:
        """Raise ValueError (one line, naming the dataset) if the arrays cannot be used."""
        if self.kind not in ("tensor", "text"):
            raise ValueError(f"dataset '{self.name}': kind must be 'tensor' or 'text', got {self.kind!r}")
        if self.num_classes < 1:
            raise ValueError(f"dataset '{self.name}' has no classes: check its label column")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset '{self.name}': {len(self.class_names)} class names for {self.num_classes} classes"
            )
        self._check_split("train", self.x_train, self.y_train)
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError(f"dataset '{self.name}': give both x_test and y_test, or neither")
        if self.x_test is not None:
            self._check_split("test", self.x_test, self.y_test)
            if self.kind == "tensor" and self.x_test.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(
                    f"dataset '{self.name}': test inputs have shape {self.x_test.shape[1:]}, "
                    f"train inputs {self.x_train.shape[1:]}"
                )

    def _check_split(self, split: str, x: np.ndarray, y: np.ndarray | None) -> None:
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise ValueError(f"dataset '{self.name}': {split} inputs and labels must be numpy arrays")
        if self.kind == "tensor" and (x.ndim < 2 or x.dtype.kind not in "biuf"):
            raise ValueError(
                f"dataset '{self.name}': {split} inputs must be numbers shaped (N, *features), "
                f"got {x.dtype} {x.shape}"
            )
        if self.kind == "tensor" and x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
            raise ValueError(
                f"dataset '{self.name}': {len(bad)} {split} row(s) hold NaN or inf inputs (first: row "
                f"{int(bad[0])}; an empty csv cell?): fill or drop those rows"
            )
        if self.kind == "text" and x.ndim != 1:
            raise ValueError(f"dataset '{self.name}': {split} texts must be a 1-D array, got shape {x.shape}")
        if len(y) == 0:
            raise ValueError(f"dataset '{self.name}' is empty: its {split} split has no rows")
        if len(x) != len(y):
            raise ValueError(f"dataset '{self.name}': {split} has {len(x)} inputs but {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"dataset '{self.name}': {split} labels must be integer class ids, got {y.dtype}"
            )
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"dataset '{self.name}': {split} labels span [{lo}, {hi}], outside [0, {self.num_classes})"
            )
