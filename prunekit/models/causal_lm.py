"""Causal language models: any ``AutoModelForCausalLM`` (hub id or local folder), and a tiny LLaMA.

``trust_remote_code`` is off by default: a folder's own Python code runs only when the user asks. The
tiny LLaMA-family config (grouped-query attention, SwiGLU FFN, RMSNorm, rotary positions, tied
embeddings) is what prunekit trains from scratch offline, so pruning starts from a model that has
learned real text (experiments/train_tiny_llama.py).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.models.hf import check_path


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 8,
    num_kv_heads: int = 2,
    intermediate_size: int = 688,
    max_position_embeddings: int = 256,
    bos_token_id: int = 0,
    eos_token_id: int = 0,
    pad_token_id: int | None = 1,
) -> Any:
    """A ``LlamaConfig`` for a few-million-parameter GQA decoder (eager attention, tied embeddings)."""
    from transformers import LlamaConfig

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size={hidden_size}, num_heads={num_heads}, num_kv_heads={num_kv_heads}: hidden_size must "
            "divide into num_heads and num_heads into num_kv_heads"
        )
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attn_implementation="eager",
    )
    return cfg


def tiny_llama(vocab_size: int, seed: int = 0, **options: Any) -> nn.Module:
    """A freshly initialised tiny ``LlamaForCausalLM`` (initialisation seeded by ``seed``)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, **options)).eval()


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` has a causal-LM head (a ``generate``-capable ``*ForCausalLM``)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    config = getattr(model, "config", None)
    return config is not None and type(model) in set(MODEL_FOR_CAUSAL_LM_MAPPING.values())


def load_causal_lm(
    path: str, trust_remote_code: bool = False, attn_implementation: str = "eager"
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` in eval mode; a config without a causal-LM head is
    refused with a one-line error."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, AutoModelForCausalLM

    path = check_path(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot load the model config '{path}' ({first}): give a causal-LM folder or hub id"
        ) from None
    auto_map = getattr(config, "auto_map", None) or {}
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and "AutoModelForCausalLM" not in auto_map:
        raise ValueError(
            f"'{path}' is a {type(config).__name__}, which has no causal-LM head: the causal_lm task needs a "
            "decoder such as LLaMA, Qwen2 or GPT-2"
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
    )
    return model.eval()


def check_vocab(model: nn.Module, tokenizer: Any) -> None:
    """A tokenizer whose ids exceed the model's embedding rows is refused before any work."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}: use the tokenizer "
            "saved with the model (data.tokenizer = the model folder)"
        )
