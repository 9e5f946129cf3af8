"""Train a tiny LLaMA-family GQA decoder from scratch on the offline corpus; deterministic by seed.

    OMP_NUM_THREADS=1 python experiments/train_tiny_llama.py configs/tiny_llama.yaml

Writes ``<out>/`` (``save_pretrained`` model + tokenizer, loadable with AutoModelForCausalLM) and
``<out>/metrics.json``: the data split, params, training history, and test perplexity next to the
add-one unigram baseline on the same predicted tokens. ``runs/`` is not committed; the test suite trains
configs/tiny_llama_test.yaml in seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from prunekit.data.lm_text import build_lm_data, load_corpus
from prunekit.metrics.perplexity import perplexity, unigram_perplexity
from prunekit.models.causal_lm import tiny_llama
from prunekit.train.lm import LMTrainConfig, train_lm

KEYS = {"seed", "out", "data", "model", "train"}


def read_config(path: str | Path) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text())
    unknown = sorted(set(cfg) - KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; allowed: {sorted(KEYS)}")
    return cfg


def lm_data(cfg: dict[str, Any], tokenizer: Any = None) -> Any:
    d = dict(cfg["data"])
    texts = load_corpus(d.pop("source", "tweets"), d.pop("files", ()))
    return build_lm_data(texts, tokenizer=tokenizer, seed=cfg.get("seed", 0), **d)


def train(cfg: dict[str, Any], out: str | Path | None = None, log=print) -> tuple[Any, Any, dict[str, Any]]:
    """Build data and model from ``cfg``, train, evaluate, save to ``out`` (default ``cfg['out']``)."""
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    data = lm_data(cfg)
    tok = data.tokenizer
    model = tiny_llama(
        len(tok),
        seed=seed,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=max(256, data.block_size),
        **cfg["model"],
    )
    params = sum(p.numel() for p in model.parameters())
    log(f"tiny LLaMA: {params:,} params; data {data.info['tokens']} tokens")
    history = train_lm(
        model, data.train, LMTrainConfig(**cfg["train"]), seed=seed, validation=data.validation, log=log
    )
    test = perplexity(model, data.test.batches(64))
    unigram = unigram_perplexity(data.train.input_ids, data.train.labels, data.test.labels, len(tok))
    metrics = {
        "params": params,
        "data": data.info,
        "history": history,
        "test": test,
        "unigram_test": unigram,
        "config": cfg,
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(out or cfg["out"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"test perplexity {test['perplexity']:.2f} (unigram {unigram['perplexity']:.2f}); saved {out}")
    return model, data, metrics


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/train_tiny_llama.py configs/tiny_llama.yaml")
    t0 = time.time()
    train(read_config(sys.argv[1]))
    print(f"done in {time.time() - t0:.0f} s")
