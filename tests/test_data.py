"""prunekit.data on the real offline sources: shapes, split sizes, determinism, no leakage, loaders, errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.config import DataConfig
from prunekit.data import DataSplits, SourceData, available_datasets, load_data, register_dataset
from prunekit.models.hf import minilm_path

MINILM = minilm_path()  # the bundled MiniLM folder holds its tokenizer


def _rows_disjoint(s: DataSplits) -> None:
    tr, va, te = (set(s.rows(k).tolist()) for k in ("train", "validation", "test"))
    assert not tr & va and not tr & te and not va & te


@pytest.fixture(scope="module")
def mnist1d() -> DataSplits:
    return load_data(DataConfig(name="mnist1d"), seed=0)


@pytest.fixture(scope="module")
def tweets() -> DataSplits:
    # Tokenization is lazy: only splits whose loader is used get tokenized.
    return load_data(DataConfig(name="tweet_sentiment", max_length=32), seed=0, tokenizer=MINILM)


# --- sources ---------------------------------------------------------------------------------------
def test_mnist1d_shapes_sizes_and_stratified_validation(mnist1d: DataSplits) -> None:
    assert (mnist1d.kind, mnist1d.num_classes, mnist1d.input_shape) == ("tensor", 10, (1, 40))
    assert (mnist1d.n_train, mnist1d.size("validation"), mnist1d.size("test")) == (3600, 400, 1000)
    assert mnist1d.n_train + mnist1d.size("validation") == 4000  # the published 4000 / 1000 split
    # Stratified: each class gives 10 % of its rows (± 1 for rounding), not 10 % ± sampling noise.
    per_class = np.bincount(np.concatenate([mnist1d.labels("train"), mnist1d.labels("validation")]))
    assert np.abs(np.bincount(mnist1d.labels("validation")) - 0.1 * per_class).max() < 1.0
    x = mnist1d.arrays("train").inputs
    assert x.dtype == np.float32 and x.shape == (3600, 1, 40)
    assert abs(float(np.concatenate([x, mnist1d.arrays("validation").inputs]).std()) - 1.0) < 0.05
    _rows_disjoint(mnist1d)
    assert mnist1d.rows("test").min() >= 4000  # the source's own test rows


def test_mnist1d_is_cached_and_generation_restores_global_rng(mnist1d: DataSplits) -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    t0 = time.perf_counter()
    again = load_data(DataConfig(name="mnist1d"), seed=0)
    assert time.perf_counter() - t0 < 5.0  # read from the .npz cache (generation is ~1-10 s)
    assert np.random.rand() == expected  # mnist1d reseeds numpy's global generator; we undo that
    assert np.array_equal(again.arrays("test").inputs, mnist1d.arrays("test").inputs)


@pytest.mark.slow
def test_mnist1d_large_variant() -> None:
    s = load_data(DataConfig(name="mnist1d", variant="large", validation_fraction=0.0), seed=0)
    assert (s.n_train, s.size("validation"), s.size("test")) == (40000, 0, 10000)
    assert s.input_shape == (1, 40)


def test_fashion_mnist_sizes_balance_and_range(fashion_mnist_files: None) -> None:
    s = load_data(DataConfig(name="fashion_mnist"), seed=0)
    assert (s.n_train, s.size("validation"), s.size("test")) == (54000, 6000, 10000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and s.class_names[9] == "Ankle boot"
    assert np.bincount(s.labels("test"), minlength=10).tolist() == [1000] * 10
    assert np.bincount(s.labels("validation"), minlength=10).tolist() == [600] * 10
    x = s.arrays("test").inputs
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    _rows_disjoint(s)


def test_fashion_mnist_missing_files_name_the_apt_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNEKIT_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(name="fashion_mnist"), seed=0)


def test_fashion_mnist_failed_hub_fallback_still_names_the_apt_package(tmp_path: Path, monkeypatch) -> None:
    import datasets  # imported under the session's offline settings: the hub call below fails at once

    assert datasets.config.HF_HUB_OFFLINE
    monkeypatch.setenv("PRUNEKIT_FASHION_MNIST_DIR", str(tmp_path))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")  # prunekit tries the hub; `datasets` cannot reach it
    with pytest.raises(ValueError, match=r"hub copy failed .*apt-get install dataset-fashion-mnist") as err:
        load_data(DataConfig(name="fashion_mnist"), seed=0)
    assert "\n" not in str(err.value)


def test_digits_flat_scaled_with_seeded_test_split() -> None:
    s = load_data(DataConfig(name="digits"), seed=0)
    sizes = [s.size(k) for k in ("train", "validation", "test")]
    assert sum(sizes) == 1797 and s.size("test") == round(0.2 * 1797)
    assert s.input_shape == (64,) and s.num_classes == 10 and s.info["test_split"] == "carved"
    x = s.arrays("train").inputs
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    _rows_disjoint(s)


def test_tweets_rows_classes_and_no_text_in_two_splits(tweets: DataSplits) -> None:
    assert tweets.kind == "text" and tweets.class_names == ["negative", "neutral", "positive"]
    assert sum(tweets.size(k) for k in ("train", "validation", "test")) == 38158
    counts = sum(np.bincount(tweets.labels(k), minlength=3) for k in ("train", "validation", "test"))
    assert counts.tolist() == [16186, 15018, 6954]
    _rows_disjoint(tweets)
    # The corpus repeats retweets (37,243 distinct texts): identical texts never straddle a split.
    train_text = set(tweets.arrays("train").text.tolist())
    assert not train_text & set(tweets.arrays("test").text.tolist())
    assert not train_text & set(tweets.arrays("validation").text.tolist())


def test_tweets_loader_yields_token_dicts(tweets: DataSplits) -> None:
    x, y = next(iter(tweets.loader("validation", 8)))
    assert isinstance(x, dict) and {"input_ids", "attention_mask"} <= set(x)
    assert all(v.shape == (8, 32) and v.dtype == torch.int64 for v in x.values())
    assert y.shape == (8,) and y.dtype == torch.int64
    assert bool((x["attention_mask"][:, 0] == 1).all())  # [CLS] is always attended
    assert tweets.input_shape == (32,)


def test_text_dataset_without_tokenizer_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="needs a tokenizer"):
        load_data(DataConfig(name="tweet_sentiment"), seed=0, tokenizer=None)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_data(DataConfig(name="tweet_sentiment", tokenizer="/nonexistent/tok"), seed=0)


# --- splitting -------------------------------------------------------------------------------------
def test_same_seed_same_splits_other_seed_other_splits() -> None:
    a = load_data(DataConfig(name="digits"), seed=1)
    b = load_data(DataConfig(name="digits"), seed=1)
    c = load_data(DataConfig(name="digits"), seed=2)
    for k in ("train", "validation", "test"):
        assert np.array_equal(a.rows(k), b.rows(k))
        assert np.array_equal(a.arrays(k).inputs, b.arrays(k).inputs)
        assert not np.array_equal(a.rows(k), c.rows(k))


def test_subsampling_is_deterministic_stratified_and_independent(mnist1d: DataSplits) -> None:
    cfg = DataConfig(name="mnist1d", max_train_samples=500, max_eval_samples=100)
    s = load_data(cfg, seed=0)
    assert (s.n_train, s.size("validation"), s.size("test")) == (500, 100, 100)
    full = np.bincount(mnist1d.labels("test"), minlength=10)
    assert np.abs(np.bincount(s.labels("test"), minlength=10) - full / 10).max() < 1.0  # stratified
    assert set(s.rows("train").tolist()) <= set(mnist1d.rows("train").tolist())
    assert np.array_equal(s.rows("train"), load_data(cfg, seed=0).rows("train"))
    # Subsampling train does not reshuffle validation (each step has its own generator stream).
    assert set(s.rows("validation").tolist()) <= set(mnist1d.rows("validation").tolist())


# --- loaders ---------------------------------------------------------------------------------------
def test_loader_batches_order_and_speed(mnist1d: DataSplits) -> None:
    batches = list(mnist1d.loader("test", 256))
    assert [len(y) for _, y in batches] == [256, 256, 256, 232]
    x0, y0 = batches[0]
    assert x0.shape == (256, 1, 40) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    assert torch.equal(x0, torch.from_numpy(mnist1d.arrays("test").inputs[:256]))  # unshuffled = in order
    assert len(list(mnist1d.loader("test", 256, drop_last=True))) == 3
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            mnist1d.loader("test", bad)
    empty = load_data(DataConfig(name="mnist1d", validation_fraction=0.0), seed=0)
    assert empty.size("validation") == 0 and list(empty.loader("validation", 8, shuffle=True)) == []

    def order(seed: int) -> torch.Tensor:
        return torch.cat([y for _, y in mnist1d.loader("train", 128, shuffle=True, seed=seed)])

    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == sorted(mnist1d.labels("train").tolist())  # a permutation

    t0 = time.perf_counter()
    n = sum(len(y) for _, y in mnist1d.loader("train", 128, shuffle=True))
    assert n == 3600 and time.perf_counter() - t0 < 1.0  # measured ~0.02 s


def test_dataset_views_are_hf_datasets(mnist1d: DataSplits) -> None:
    import datasets

    ds = mnist1d.validation
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 400
    assert ds.features["labels"].names == [str(i) for i in range(10)]
    row = ds[:3]
    assert row["inputs"].shape == (3, 1, 40)
    assert np.array_equal(row["inputs"], mnist1d.arrays("validation").inputs[:3])
    assert mnist1d.describe()["sizes"] == {"train": 3600, "validation": 400, "test": 1000}


# --- generic sources and errors ----------------------------------------------------------------------
def test_csv_numeric_source_with_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["f0,f1,f2,kind"] + [
        f"{a:.3f},{b:.3f},{c:.3f},{'cat' if a > 0 else 'dog'}" for a, b, c in rng.normal(size=(50, 3))
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    s = load_data(
        DataConfig(name="csv", files={"train": str(tmp_path / "train.csv")}, label_column="kind"), seed=0
    )
    assert s.kind == "tensor" and s.input_shape == (3,) and s.class_names == ["cat", "dog"]
    assert sum(s.size(k) for k in ("train", "validation", "test")) == 50 and s.size("test") == 10
    x, y = next(iter(s.loader("train", 4)))
    assert x.shape == (4, 3) and x.dtype == torch.float32
    assert torch.equal(y, (x[:, 0] <= 0).long())  # label follows the sign of f0 exactly as written


def test_csv_text_source_with_test_file(tmp_path: Path) -> None:
    for split, n in (("train", 30), ("test", 10)):
        # Row 3 has an empty text cell (read as None): it must tokenize as an empty string, not crash.
        texts = ["" if i == 3 else f"sample {i} {'good' if i % 2 else 'bad'}" for i in range(n)]
        rows = ["text,label"] + [f"{t},{i % 2}" for i, t in enumerate(texts)]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    files = {k: str(tmp_path / f"{k}.csv") for k in ("train", "test")}
    s = load_data(DataConfig(name="csv", files=files, max_length=16), seed=0, tokenizer=MINILM)
    assert (
        s.kind == "text" and s.num_classes == 2 and s.size("test") == 10 and s.info["test_split"] == "source"
    )
    x, y = next(iter(s.loader("test", 5)))
    assert x["input_ids"].shape == (5, 16) and y.tolist() == [0, 1, 0, 1, 0]
    assert s.arrays("test").text[3] == "" and int(x["attention_mask"][3].sum()) == 2  # [CLS] [SEP]
    # The same folder through the generic `hf` source (datasets.load_dataset on a local folder).
    h = load_data(DataConfig(name="hf", path=str(tmp_path), max_length=16), seed=0, tokenizer=MINILM)
    assert h.size("test") == 10 and np.array_equal(h.arrays("test").text, s.arrays("test").text)


def test_json_and_imagefolder_sources(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "d.jsonl").write_text(
        "".join(f'{{"a": {i}, "b": {i * 2}, "label": {i % 3}}}\n' for i in range(30))
    )
    s = load_data(DataConfig(name="json", files={"train": str(tmp_path / "d.jsonl")}), seed=0)
    assert s.input_shape == (2,) and s.num_classes == 3
    assert [s.size(k) for k in ("train", "validation", "test")] == [22, 2, 6]  # 20 % test, 10 % of the rest
    for cls in ("ants", "bees"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (6, 4), color=(i * 40, 10, 200 if cls == "bees" else 0)).save(
                tmp_path / "img" / cls / f"{i}.png"
            )
    s = load_data(DataConfig(name="imagefolder", path=str(tmp_path / "img"), validation_fraction=0.0), seed=0)
    assert s.input_shape == (3, 4, 6) and s.class_names == ["ants", "bees"]
    assert [s.size(k) for k in ("train", "validation", "test")] == [8, 0, 2]
    x, y = next(iter(s.loader("train", 8)))
    assert torch.allclose(x[:, 2].mean(dim=(1, 2)), y.float() * 200 / 255)  # blue channel encodes the class


def test_missing_file_unknown_name_and_empty_dataset(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="nope.csv"):
        load_data(DataConfig(name="csv", files={"train": str(missing)}), seed=0)
    with pytest.raises(
        ValueError, match=r"cannot load dataset 'nobody/no-such-dataset' .*offline give a local"
    ):
        load_data(DataConfig(name="hf", path="nobody/no-such-dataset"), seed=0)  # offline in tests
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist2d'.*fashion_mnist.*mnist1d"):
        load_data(DataConfig(name="mnist2d"), seed=0)
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match="empty.csv.*(empty|no rows)"):
        load_data(DataConfig(name="csv", files={"train": str(tmp_path / "empty.csv")}), seed=0)
    for i, labels in enumerate((["cat", "", "dog"], ["0", "", "1"])):  # an empty label cell is no class
        (tmp_path / f"holes{i}.csv").write_text(
            "a,label\n" + "".join(f"{j},{v}\n" for j, v in enumerate(labels))
        )
        with pytest.raises(ValueError, match=r"label column 'label' has 1 empty cell\(s\) .* at row 1"):
            load_data(DataConfig(name="csv", files={"train": str(tmp_path / f"holes{i}.csv")}), seed=0)
    (tmp_path / "gaps.csv").write_text("a,b,label\n1,2.5,0\n2,,1\n3,3,1\n")  # an empty input cell: NaN
    with pytest.raises(ValueError, match=r"1 train row\(s\) hold NaN or inf inputs \(first: row 1"):
        load_data(DataConfig(name="csv", files={"train": str(tmp_path / "gaps.csv")}), seed=0)
    with pytest.raises(ValueError, match="no label column 'target'"):
        (tmp_path / "x.csv").write_text("a,label\n1,0\n2,1\n")
        load_data(
            DataConfig(name="csv", files={"train": str(tmp_path / "x.csv")}, label_column="target"), seed=0
        )


def test_register_dataset_custom_and_duplicate() -> None:
    def squares(cfg: DataConfig) -> SourceData:
        x = np.arange(40).reshape(20, 2)  # int64: load_data hands models float32
        return SourceData(name="squares", kind="tensor", x_train=x, y_train=np.arange(20) % 2, num_classes=2)

    register_dataset("test_squares", squares)
    assert "test_squares" in available_datasets()
    s = load_data(DataConfig(name="test_squares", validation_fraction=0.25), seed=0)
    assert (s.n_train, s.size("validation"), s.size("test")) == (12, 4, 4)
    assert next(iter(s.loader("train", 4)))[0].dtype == torch.float32
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("test_squares", squares)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("mnist1d", squares)

    def empty(cfg: DataConfig) -> SourceData:
        return SourceData("nothing", "tensor", np.zeros((0, 2), np.float32), np.zeros(0, np.int64), 2)

    register_dataset("test_empty", empty)
    with pytest.raises(ValueError, match="dataset 'nothing' is empty"):
        load_data(DataConfig(name="test_empty"), seed=0)

    def flat(cfg: DataConfig) -> SourceData:
        return SourceData("flat", "tensor", np.zeros(6, np.float32), np.zeros(6, np.int64), 1)

    register_dataset("test_flat", flat)
    with pytest.raises(ValueError, match=r"shaped \(N, \*features\)"):
        load_data(DataConfig(name="test_flat"), seed=0)

    def two_rows(cfg: DataConfig) -> SourceData:
        return SourceData("two", "tensor", np.zeros((2, 3), np.float32), np.array([0, 1]), 2)

    register_dataset("test_two_rows", two_rows)  # 20 % of 2 rows rounds to an empty test split
    with pytest.raises(ValueError, match=r"too few rows \(2\) to carve a test split"):
        load_data(DataConfig(name="test_two_rows"), seed=0)


def test_array_cache_hit_miss_and_corrupt_file(tmp_path: Path, monkeypatch) -> None:
    from prunekit.data.cache import cached_arrays

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def make() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"a": np.arange(5)}

    assert cached_arrays("k", make)["a"].tolist() == [0, 1, 2, 3, 4] and len(calls) == 1
    assert cached_arrays("k", make)["a"].tolist() == [0, 1, 2, 3, 4] and len(calls) == 1  # a hit
    (tmp_path / "cache" / "k.npz").write_bytes(b"not a zip file")
    assert cached_arrays("k", make)["a"].tolist() == [0, 1, 2, 3, 4] and len(calls) == 2  # regenerated
    whole = (tmp_path / "cache" / "k.npz").read_bytes()
    (tmp_path / "cache" / "k.npz").write_bytes(whole[: len(whole) // 2])  # truncated zip: BadZipFile
    assert cached_arrays("k", make)["a"].tolist() == [0, 1, 2, 3, 4] and len(calls) == 3  # regenerated
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["k.npz"]  # no temporary files left behind
