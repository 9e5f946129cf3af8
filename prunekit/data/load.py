"""`load_data`: one registered source → seeded train / validation / test splits.

Order: read the source; carve a test split if it has none (``TEST_FRACTION``); carve validation
(``data.validation_fraction`` of train); subsample (``max_train_samples`` / ``max_eval_samples``); tokenize
text last, so subsampling also saves tokenizer time. All selections are stratified by class and drawn from
generators keyed by (seed, step), so the same seed gives the same splits on every machine and rank.
Text rows with identical strings stay on one side of every split (the tweet corpus repeats retweets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunekit.config import DataConfig
from prunekit.data.arrays import SplitArrays
from prunekit.data.registry import get_loader
from prunekit.data.source import SourceData
from prunekit.data.split import (
    STREAM_TEST,
    STREAM_TEST_SUBSET,
    STREAM_TRAIN_SUBSET,
    STREAM_VALIDATION,
    STREAM_VALIDATION_SUBSET,
    rng_for,
    split_off,
    stratified_pick,
)
from prunekit.data.splits import DataSplits

TEST_FRACTION = 0.2  # for sources without a test split of their own (digits, tweets, a lone CSV)


class _LazyEncoder:
    """Loads the tokenizer on the first split that needs token ids (importing transformers takes seconds)."""

    def __init__(self, path: str, max_length: int):
        self.path, self.max_length = path, max_length
        self._tokenizer: Any = None

    def __call__(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        from prunekit.data.text import load_tokenizer, tokenize

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return tokenize(self._tokenizer, texts, self.max_length)


def _as_strings(x: np.ndarray) -> np.ndarray:
    return np.array(
        ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in x], dtype=object
    )


def _subsample(idx: np.ndarray, y_all: np.ndarray, limit: int | None, seed: int, stream: int) -> np.ndarray:
    if limit is None or limit >= len(idx):
        return idx
    return idx[stratified_pick(y_all[idx], limit, rng_for(seed, stream))]


def split_rows(src: SourceData, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Row ids of each split in the source's rows stacked as [train; test] (sorted, disjoint)."""
    n_train = len(src.y_train)
    y_all = src.y_train if src.y_test is None else np.concatenate([src.y_train, src.y_test])
    text_groups = src.kind == "text"  # identical texts stay together: no retweet in both train and test
    train = np.arange(n_train, dtype=np.int64)
    if src.y_test is None:
        keep, taken = split_off(
            src.y_train, TEST_FRACTION, rng_for(seed, STREAM_TEST), src.x_train if text_groups else None
        )
        train, test = train[keep], train[taken]
        if len(test) == 0:  # a handful of rows: 20 % rounds to none, and nothing could be evaluated
            raise ValueError(
                f"dataset '{cfg.name}' has too few rows ({n_train}) to carve a test split: add data or "
                "give the source a test split of its own"
            )
    else:
        test = np.arange(n_train, len(y_all), dtype=np.int64)
    x_train = src.x_train[train] if text_groups else None
    keep, taken = split_off(y_all[train], cfg.validation_fraction, rng_for(seed, STREAM_VALIDATION), x_train)
    train, validation = train[keep], train[taken]
    if len(train) == 0:
        raise ValueError(
            f"dataset '{cfg.name}' leaves no training rows after the test / validation splits: "
            "lower data.validation_fraction or add data"
        )
    return {
        "train": _subsample(train, y_all, cfg.max_train_samples, seed, STREAM_TRAIN_SUBSET),
        "validation": _subsample(validation, y_all, cfg.max_eval_samples, seed, STREAM_VALIDATION_SUBSET),
        "test": _subsample(test, y_all, cfg.max_eval_samples, seed, STREAM_TEST_SUBSET),
    }


def _take(src: SourceData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels of source rows ``rows`` without concatenating train and test inputs."""
    n_train = len(src.y_train)
    in_train = rows < n_train
    if in_train.all() or src.x_test is None or src.y_test is None:
        return src.x_train[rows], src.y_train[rows]
    if not in_train.any():
        return src.x_test[rows - n_train], src.y_test[rows - n_train]
    x = np.concatenate([src.x_train[rows[in_train]], src.x_test[rows[~in_train] - n_train]])
    y = np.concatenate([src.y_train[rows[in_train]], src.y_test[rows[~in_train] - n_train]])
    return x, y


def load_data(cfg: DataConfig, seed: int, tokenizer: str | None = None) -> DataSplits:
    """Load ``cfg.name`` and split it deterministically from ``seed``.

    ``tokenizer``: where a text dataset's tokenizer lives when ``data.tokenizer`` is not set (a local
    folder or hub id); the caller passes the model's files (``prunekit.models.hf_path``).

    Raises ValueError with a one-line message for an unknown name, missing files, an empty dataset or a
    text dataset without a tokenizer.
    """
    src = get_loader(cfg.name)(cfg)
    if not isinstance(src, SourceData):
        raise ValueError(f"the loader of dataset '{cfg.name}' returned {type(src).__name__}, not SourceData")
    src.validate()
    if src.kind == "text":  # empty CSV cells arrive as None / NaN; they tokenize as empty strings
        src.x_train = _as_strings(src.x_train)
        src.x_test = None if src.x_test is None else _as_strings(src.x_test)
    rows = split_rows(src, cfg, seed)
    info: dict[str, Any] = {"seed": seed, "test_split": "carved" if src.x_test is None else "source"}
    splits: dict[str, SplitArrays] = {}
    if src.kind == "text":
        from prunekit.data.text import check_tokenizer_path, tokenizer_path

        path = tokenizer_path(cfg, tokenizer)
        check_tokenizer_path(path)
        encode = _LazyEncoder(path, cfg.max_length)
        for name, r in rows.items():
            x, y = _take(src, r)
            splits[name] = SplitArrays(None, y, text=x, encode=encode, rows=r)
        input_shape: tuple[int, ...] = (cfg.max_length,)
        info.update(tokenizer=path, max_length=cfg.max_length)
    else:
        for name, r in rows.items():
            x, y = _take(src, r)
            # Models take float32; a custom loader may hand over float64 or integer pixels.
            splits[name] = SplitArrays(np.ascontiguousarray(x, dtype=np.float32), y, rows=r)
        input_shape = tuple(src.x_train.shape[1:])
    return DataSplits(
        name=cfg.name,
        kind=src.kind,
        splits=splits,
        num_classes=src.num_classes,
        input_shape=input_shape,
        class_names=src.class_names,
        info=info,
    )
