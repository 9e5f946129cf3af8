"""Real datasets as seeded train / validation / test splits (see :func:`load_data`).

Built-in names: mnist1d, fashion_mnist, digits, tweet_sentiment (offline), and the generic hf, csv, json,
imagefolder. Add your own with :func:`register_dataset`. Importing this package pulls in neither
transformers nor datasets; they load when a source or a Dataset view needs them.
"""

from prunekit.data.arrays import SplitArrays
from prunekit.data.load import TEST_FRACTION, load_data
from prunekit.data.registry import available_datasets, register_dataset
from prunekit.data.source import SourceData
from prunekit.data.splits import SPLITS, DataSplits

__all__ = [
    "SPLITS",
    "TEST_FRACTION",
    "DataSplits",
    "SourceData",
    "SplitArrays",
    "available_datasets",
    "load_data",
    "register_dataset",
]
