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

from prunekit.config import DataConfig, ModelConfig
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
from prunekit.data.splits import DataSplits, SplitArrays

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


def _subsample(
    x: np.ndarray, y: np.ndarray, limit: int | None, seed: int, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or limit >= len(y):
        return x, y
    idx = stratified_pick(y, limit, rng_for(seed, stream))
    return x[idx], y[idx]


def load_data(cfg: DataConfig, seed: int, model_cfg: ModelConfig | None = None) -> DataSplits:
    """Load ``cfg.name`` and split it deterministically from ``seed``.

    Raises ValueError with a one-line message for an unknown name, missing files, an empty dataset or a
    text dataset without a tokenizer.
    """
    src = get_loader(cfg.name)(cfg, model_cfg)
    if not isinstance(src, SourceData):
        raise ValueError(f"the loader of dataset '{cfg.name}' returned {type(src).__name__}, not SourceData")
    src.validate()
    groups = (lambda x: x) if src.kind == "text" else (lambda x: None)

    x, y = src.x_train, src.y_train
    test_carved = src.x_test is None
    if test_carved:
        keep, taken = split_off(y, TEST_FRACTION, rng_for(seed, STREAM_TEST), groups(x))
        x_test, y_test = x[taken], y[taken]
        x, y = x[keep], y[keep]
    else:
        x_test, y_test = src.x_test, src.y_test
    keep, taken = split_off(y, cfg.validation_fraction, rng_for(seed, STREAM_VALIDATION), groups(x))
    x_val, y_val = x[taken], y[taken]
    x, y = x[keep], y[keep]
    if len(y) == 0:
        raise ValueError(
            f"dataset '{cfg.name}' leaves no training rows after the test / validation splits: "
            "lower data.validation_fraction or add data"
        )

    x, y = _subsample(x, y, cfg.max_train_samples, seed, STREAM_TRAIN_SUBSET)
    x_val, y_val = _subsample(x_val, y_val, cfg.max_eval_samples, seed, STREAM_VALIDATION_SUBSET)
    x_test, y_test = _subsample(x_test, y_test, cfg.max_eval_samples, seed, STREAM_TEST_SUBSET)

    parts = {"train": (x, y), "validation": (x_val, y_val), "test": (x_test, y_test)}
    info = {"seed": seed, "test_split": "carved" if test_carved else "source"}
    if src.kind == "text":
        from prunekit.data.text import check_tokenizer_path, tokenizer_path

        path = tokenizer_path(cfg, model_cfg)
        check_tokenizer_path(path)
        encode = _LazyEncoder(path, cfg.max_length)
        splits = {name: SplitArrays(None, ys, text=xs, encode=encode) for name, (xs, ys) in parts.items()}
        input_shape: tuple[int, ...] = (cfg.max_length,)
        info.update(tokenizer=path, max_length=cfg.max_length)
    else:
        splits = {name: SplitArrays(np.ascontiguousarray(xs), ys) for name, (xs, ys) in parts.items()}
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
