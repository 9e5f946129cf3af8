"""Tokenizing text splits: fixed-length padding, so every batch has one shape (simple DDP and latency)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.config import DataConfig

_CHUNK = 4096  # texts per tokenizer call: big enough for the fast tokenizer, small enough for progress


def tokenizer_path(cfg: DataConfig, fallback: str | None) -> str:
    """Where the tokenizer comes from: ``data.tokenizer``, else ``fallback`` (the caller's: the model's
    files), so that datasets never need to know which model will read them."""
    if cfg.tokenizer:
        return cfg.tokenizer
    if fallback:
        return fallback
    raise ValueError(
        f"text dataset '{cfg.name}' needs a tokenizer: set data.tokenizer (a local folder or hub id) or model.path"
    )


def check_tokenizer_path(path: str) -> None:
    """Fail early for a local path that does not exist (hub ids are only checked when loaded)."""
    p = Path(path).expanduser()
    looks_local = path.startswith(("/", ".", "~")) or p.exists()
    if looks_local and not (p / "tokenizer_config.json").is_file() and not (p / "tokenizer.json").is_file():
        raise ValueError(
            f"no tokenizer files in '{path}': set data.tokenizer to a model folder with tokenizer.json"
        )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        from prunekit.data.generic import first_line

        raise ValueError(
            f"cannot load the tokenizer '{path}' ({first_line(err)}): set data.tokenizer to a local model folder"
        ) from None


def tokenize(tokenizer: Any, texts: np.ndarray, max_length: int, desc: str = "") -> dict[str, np.ndarray]:
    """Token ids of ``texts``, padded / truncated to ``max_length``, as int64 arrays ``(N, max_length)``."""
    from tqdm.auto import tqdm

    parts: list[dict[str, np.ndarray]] = []
    starts = range(0, len(texts), _CHUNK)
    show = len(texts) > 2 * _CHUNK and sys.stderr.isatty()
    for start in tqdm(starts, desc=f"tokenizing {desc}".strip(), disable=not show):
        chunk = [str(t) for t in texts[start : start + _CHUNK]]
        enc = tokenizer(
            chunk, max_length=max_length, padding="max_length", truncation=True, return_tensors="np"
        )
        parts.append({k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
    if not parts:
        names = tokenizer.model_input_names
        return {k: np.zeros((0, max_length), dtype=np.int64) for k in names}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
