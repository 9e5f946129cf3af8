"""Language-model metrics: exact token-weighted perplexity, a unigram baseline, MACs and CPU latency per token.

Perplexity is ``exp(Σ token NLL / #tokens)`` over every predicted token of the split (labels != -100,
after the causal shift): summed per token, not averaged per batch, so a short last batch weighs what its
tokens weigh.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.batch import Batch, move_to

IGNORE = -100


def _shifted(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token logits and targets: position t predicts label t+1."""
    return logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


def token_nll(model: nn.Module, batches: Iterable[Batch]) -> tuple[float, int]:
    """(Σ next-token negative log-likelihood in nats, number of predicted tokens), eval mode, no grad."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for inputs, labels in batches:
                inputs, labels = move_to(inputs, device), labels.to(device)
                logits, target = _shifted(model(**inputs).logits.float(), labels)
                total += float(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").double())
                count += int((target != IGNORE).sum())
    finally:
        model.train(was)
    if count == 0:
        raise ValueError("no tokens to score: the split's blocks are all padding")
    return total, count


def perplexity(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float | int]:
    """Exact perplexity over ``batches``: ``{"perplexity", "nll", "tokens"}`` (nll = mean nats/token)."""
    total, count = token_nll(model, batches)
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count}


def unigram_perplexity(
    train_ids: np.ndarray, train_labels: np.ndarray, eval_labels: np.ndarray, vocab_size: int
) -> dict[str, float | int]:
    """Perplexity of the add-one-smoothed unigram distribution of the train tokens, on exactly the
    tokens a causal LM predicts in ``eval_labels`` (positions 1.. of each block, labels != -100)."""
    train = train_ids[train_labels != IGNORE]
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    target = eval_labels[:, 1:].reshape(-1)
    target = target[target != IGNORE]
    nll = float(-logp[target].mean())
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": int(target.size)}


def macs_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward MACs of one sequence of ``seq_len`` tokens divided by ``seq_len`` (prefill cost per token;
    attention scores included, so it grows with ``seq_len``)."""
    from prunekit.metrics.macs import count_macs

    ids = torch.zeros(1, seq_len, dtype=torch.long, device=next(model.parameters()).device)
    return count_macs(model, {"input_ids": ids}) / seq_len


def _median_ms(times: list[float]) -> float:
    return float(np.median(np.asarray(times)) * 1e3)


def _new_cache(model: nn.Module) -> object:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def latency_per_token(
    model: nn.Module,
    prompt_len: int = 64,
    new_tokens: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, float | int]:
    """CPU milliseconds per token: ``prefill_ms_per_token`` (one forward of a ``prompt_len`` prompt, / its
    length) and ``decode_ms_per_token`` (greedy steps with the KV cache after that prompt); medians over
    ``repeats`` after ``warmup``, at ``threads`` torch threads (restored afterwards)."""
    vocab = model.get_input_embeddings().num_embeddings
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    prompt = prompt.to(next(model.parameters()).device)
    # transformers >= 5.24 renamed past_key_values to cache
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    old, was = torch.get_num_threads(), model.training
    torch.set_num_threads(threads)
    model.eval()
    prefill: list[float] = []
    decode: list[float] = []
    try:
        with torch.no_grad():
            for r in range(warmup + repeats):
                start = time.perf_counter()
                cache = {key: _new_cache(model)}  # a DynamicCache, updated in place by every step
                out = model(input_ids=prompt, use_cache=True, **cache)
                mid = time.perf_counter()
                token = out.logits[:, -1:].argmax(-1)
                for _ in range(new_tokens):
                    token = model(input_ids=token, use_cache=True, **cache).logits[:, -1:].argmax(-1)
                end = time.perf_counter()
                if r >= warmup:
                    prefill.append((mid - start) / prompt_len)
                    decode.append((end - mid) / new_tokens)
    finally:
        torch.set_num_threads(old)
        model.train(was)
    return {
        "prefill_ms_per_token": _median_ms(prefill),
        "decode_ms_per_token": _median_ms(decode),
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "threads": threads,
    }
