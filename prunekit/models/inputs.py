"""Example inputs for tracing (dependency graphs, MAC counts, latency): the right kind, shape and device."""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prunekit.batch import device_of
from prunekit.config import ModelConfig


def _text_info(model_or_cfg: nn.Module | ModelConfig) -> tuple[bool, int, bool]:
    """(is text, vocab size, takes token_type_ids) for a model or a model config."""
    if isinstance(model_or_cfg, ModelConfig):
        if model_or_cfg.name not in ("hf", "minilm"):
            return False, 0, False
        from prunekit.models.hf import auto_class, hf_config_for

        config = hf_config_for(model_or_cfg, 2)
        is_text = auto_class(config).__name__ == "AutoModelForSequenceClassification"
        return (
            is_text,
            int(getattr(config, "vocab_size", 0) or 0),
            int(getattr(config, "type_vocab_size", 0) or 0) > 0,
        )
    is_text = getattr(model_or_cfg, "main_input_name", None) == "input_ids"
    config = getattr(model_or_cfg, "config", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    takes_types = "token_type_ids" in inspect.signature(model_or_cfg.forward).parameters
    return is_text, vocab, takes_types


def example_inputs(
    model: nn.Module | ModelConfig,
    input_shape: tuple,
    batch: int = 2,
    kind: Literal["auto", "tensor", "text"] = "auto",
    seq_len: int | None = None,
    seed: int = 0,
) -> Tensor | dict[str, Tensor]:
    """Inputs ``model`` accepts, deterministic given ``seed``, on the model's device.

    ``kind="auto"`` picks text for HF models whose main input is ``input_ids``, else a float tensor of
    shape ``(batch, *input_shape)``. Text inputs are ``input_ids`` (random ids below the vocabulary size),
    ``attention_mask`` (all ones) and ``token_type_ids`` (zeros) where the model takes them; their length is
    ``seq_len``, else ``input_shape[0]`` when ``input_shape`` has one entry, else 16.
    """
    if kind not in ("auto", "tensor", "text"):
        raise ValueError(f"example_inputs kind must be 'auto', 'tensor' or 'text', got {kind!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"example_inputs batch must be an integer >= 1, got {batch!r}")
    if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
        raise ValueError(f"example_inputs seq_len must be a positive integer or None, got {seq_len!r}")
    gen = torch.Generator().manual_seed(seed)
    device = device_of(model) if isinstance(model, nn.Module) else torch.device("cpu")
    is_text, vocab, takes_types = _text_info(model) if kind != "tensor" else (False, 0, False)
    if kind == "text" or (kind == "auto" and is_text):
        length = seq_len or (int(input_shape[0]) if len(input_shape) == 1 else 16)
        if vocab <= 0:
            raise ValueError("text example inputs need a model with config.vocab_size (an HF text model)")
        out: dict[str, Any] = {
            "input_ids": torch.randint(0, vocab, (batch, length), generator=gen),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
        }
        if takes_types:
            out["token_type_ids"] = torch.zeros(batch, length, dtype=torch.long)
        return {k: v.to(device) for k, v in out.items()}
    return torch.randn((batch, *input_shape), generator=gen).to(device)
