"""Offline LM text: dedup, the hash split, the BPE tokenizer, packing; bad input fails with the fix."""

import numpy as np
import pytest
import torch

from prunekit.data.lm_text import (
    IGNORE,
    build_lm_data,
    dedup,
    file_texts,
    pack,
    split_of,
    split_texts,
    token_stream,
    train_tokenizer,
    tweet_texts,
)
from prunekit.models.causal_lm import check_vocab, load_causal_lm, tiny_llama


@pytest.fixture(scope="module")
def tweets():
    return tweet_texts()[:3000]


def test_dedup_normalises_whitespace_and_drops_empty():
    assert dedup(["a  b", "a b", " ", "", "c\n", "a b "]) == ["a b", "c"]


def test_split_is_by_text_alone_and_disjoint(tweets):
    parts = split_texts(tweets)
    shuffled = split_texts(list(reversed(tweets)))
    assert {k: set(v) for k, v in parts.items()} == {k: set(v) for k, v in shuffled.items()}
    assert not (set(parts["train"]) & set(parts["test"])) and not (
        set(parts["train"]) & set(parts["validation"])
    )
    n = sum(len(v) for v in parts.values())
    assert n == len(dedup(tweets)) and abs(len(parts["train"]) / n - 0.8) < 0.03
    assert split_of("hello world") == split_of("hello world")


def test_pack_loses_no_tokens_and_pads_the_tail():
    stream = np.arange(10, dtype=np.int64) + 5
    b = pack(stream, 4, pad_id=1)
    assert b["input_ids"].shape == (3, 4)
    assert (b["input_ids"][b["attention_mask"] == 1] == stream).all()
    assert (b["labels"][2, 2:] == IGNORE).all() and (b["labels"][2, :2] == stream[8:]).all()
    with pytest.raises(ValueError, match="block_size=1"):
        pack(stream, 1, pad_id=1)


def test_blocks_hold_exactly_each_splits_stream(tweets):
    data = build_lm_data(tweets, block_size=32, vocab_size=300, calibration_blocks=8, seed=3)
    parts = split_texts(tweets)
    for name in ("train", "validation", "test"):
        blocks = getattr(data, name)
        expected = token_stream(data.tokenizer, parts[name])
        assert (blocks.input_ids[blocks.attention_mask == 1] == expected).all(), name  # never crosses a split
    cal = data.calibration.input_ids
    assert len(cal) == 8 and all((data.train.input_ids == row).all(1).any() for row in cal)
    again = build_lm_data(tweets, block_size=32, vocab_size=300, calibration_blocks=8, seed=3)
    assert (
        again.calibration.input_ids == cal
    ).all() and data.tokenizer.get_vocab() == again.tokenizer.get_vocab()
    ((x, y),) = list(data.test.batches(len(data.test)))[-1:]
    assert x["input_ids"].dtype == torch.int64 and y.shape == x["input_ids"].shape


def test_tokenizer_round_trips_text(tweets):
    tok = train_tokenizer(tweets[:500], vocab_size=400)
    text = "self-driving cars are here"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id


def test_fortune_format_files(tmp_path):
    f = tmp_path / "jokes"
    f.write_text("first joke\nline two\n%\nsecond\n%\n")
    assert dedup(file_texts([f], fortune_format=True)) == ["first joke line two", "second"]
    with pytest.raises(ValueError, match="does not exist"):
        file_texts([tmp_path / "nope"])


def test_model_without_causal_lm_head_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no causal-LM head"):
        load_causal_lm(str(tmp_path))


def test_vocab_mismatch_is_refused(tweets):
    tok = train_tokenizer(tweets[:500], vocab_size=400)
    model = tiny_llama(100, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    with pytest.raises(ValueError, match="embeds only 100"):
        check_vocab(model, tok)
