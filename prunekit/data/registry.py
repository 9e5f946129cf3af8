"""Dataset loaders registered by the name users write as ``data.name`` in YAML.

A loader is ``fn(cfg: DataConfig) -> SourceData``: it only reads the
source; :func:`prunekit.data.load_data` splits, subsamples and tokenizes.
"""

from __future__ import annotations

from collections.abc import Callable

from prunekit.config import DataConfig
from prunekit.data.source import SourceData

Loader = Callable[[DataConfig], SourceData]

_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str, loader_fn: Loader) -> None:
    """Make ``loader_fn`` available as ``data.name: <name>``; a name can be registered once."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a dataset name must be a non-empty string, got {name!r}")
    if name in _LOADERS:
        raise ValueError(f"dataset '{name}' is already registered: pick another name")
    if not callable(loader_fn):
        raise ValueError(f"the loader for dataset '{name}' must be callable, got {type(loader_fn).__name__}")
    _LOADERS[name] = loader_fn


def get_loader(name: str) -> Loader:
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset '{name}': known datasets are {', '.join(available_datasets())}")
    return _LOADERS[name]


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def _register_builtins() -> None:
    from prunekit.data import builtin, generic

    for name, fn in {
        "mnist1d": builtin.load_mnist1d,
        "fashion_mnist": builtin.load_fashion_mnist,
        "digits": builtin.load_digits,
        "tweet_sentiment": builtin.load_tweet_sentiment,
        "hf": generic.load_hf,
        "csv": generic.load_csv,
        "json": generic.load_json,
        "imagefolder": generic.load_imagefolder,
    }.items():
        register_dataset(name, fn)


_register_builtins()
