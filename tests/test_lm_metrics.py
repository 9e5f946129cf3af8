"""LM metrics against hand computations: exact perplexity, the unigram baseline, MACs per token."""

import math

import numpy as np
import torch

from prunekit.data.lm_text import IGNORE, LMBlocks, pack
from prunekit.metrics.macs import count_macs
from prunekit.metrics.perplexity import latency_per_token, macs_per_token, perplexity, unigram_perplexity
from prunekit.models.causal_lm import tiny_llama

V = 50


def _model():
    return tiny_llama(
        V, seed=1, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48
    )


def _blocks():
    stream = torch.randint(2, V, (45,), generator=torch.Generator().manual_seed(0)).numpy()
    return LMBlocks(**pack(stream, 8, pad_id=1))  # 6 blocks, the last with 5 real tokens


def test_perplexity_is_exp_of_mean_token_loss_by_hand():
    model, blocks = _model(), _blocks()
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(blocks)):  # one block at a time, one token at a time
            ids = torch.from_numpy(blocks.input_ids[i : i + 1])
            mask = torch.from_numpy(blocks.attention_mask[i : i + 1])
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0].double(), -1)
            for t in range(1, ids.shape[1]):
                if blocks.labels[i, t] != IGNORE:
                    nll -= float(logp[t - 1, blocks.labels[i, t]])
                    count += 1
    got = perplexity(
        model, blocks.batches(4)
    )  # batches of 4 and 2 blocks: token-weighted, not batch-averaged
    assert got["tokens"] == count == 5 * 7 + 4  # the last block: 5 real tokens, 4 predictions
    assert math.isclose(got["perplexity"], math.exp(nll / count), rel_tol=1e-5)


def test_unigram_baseline_by_hand():
    train_ids = np.array([[3, 3, 4, 1]])
    train_labels = np.array([[3, 3, 4, IGNORE]])
    eval_labels = np.array([[4, 3, 4, IGNORE]])  # position 0 is never predicted
    p = (np.array([0, 0, 0, 2, 1]) + 1.0) / (3 + 5)
    expected = math.exp(-(math.log(p[3]) + math.log(p[4])) / 2)
    got = unigram_perplexity(train_ids, train_labels, eval_labels, vocab_size=5)
    assert got["tokens"] == 2 and math.isclose(got["perplexity"], expected)


def test_macs_per_token_and_latency_keys():
    model = _model()
    ids = torch.zeros(1, 16, dtype=torch.long)
    assert macs_per_token(model, 16) == count_macs(model, {"input_ids": ids}) / 16
    assert macs_per_token(model, 32) > macs_per_token(model, 16)  # attention scores grow with length
    lat = latency_per_token(model, prompt_len=8, new_tokens=4, repeats=2, warmup=1)
    assert lat["threads"] == 1 and lat["prefill_ms_per_token"] > 0 and lat["decode_ms_per_token"] > 0
