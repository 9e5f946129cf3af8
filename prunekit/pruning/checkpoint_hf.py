"""The HF side of a checkpoint: ``config.json`` (poisoned when it cannot express the prune), the
tokenizer files, and the code of a remote-code model.

When an HF config cannot express the pruned widths (per-layer widths differ, or BERT heads were
pruned: its head size is derived from ``hidden_size / num_attention_heads``), ``config.json`` gets
``model_type: prunekit-pruned-<type>`` and its width fields an explanatory string, so every
``from_pretrained`` fails before building a model — even with ``ignore_mismatched_sizes=True``,
which would otherwise load re-initialised weights silently — while ``AutoTokenizer`` still works.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

# HF config fields that carry layer widths; poisoned when the pruned model cannot be expressed, under
# their standard names and under the family's own (attribute_map: GPT-2 n_head / n_embd, DistilBERT
# n_heads / dim, T5 num_heads / d_model). A string hidden size stops every model class from being
# built, whatever the family calls its FFN width (n_inner, d_ff, ffn_dim...).
HF_WIDTH_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size")
NOT_EXPRESSIBLE = "non-uniform after pruning: load this folder with prunekit.load(folder)"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "merges.txt",
    "vocab.json",
    "tokenizer.model",
    "preprocessor_config.json",
)


def _hf_config_dict(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    return config.to_dict()


def _hf_expressible(model: nn.Module) -> bool:
    """Would ``from_config(model.config)`` build exactly these shapes? (Checked on the meta device.)"""
    d = model.config.to_dict()
    if any(isinstance(d.get(k), (list, dict)) for k in HF_WIDTH_KEYS):
        return False
    # the config's own class (a remote-code one too), from the saved fields only, as from_pretrained reads them
    config = type(model.config).from_dict({k: v for k, v in d.items() if k not in ("transformers_version",)})
    try:
        with torch.device("meta"):
            fresh = type(model)._from_config(config)  # the model's own class, whatever its head
    except Exception:  # the config itself cannot build a model: certainly not expressible
        return False
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return want == got


def write_hf_files(model: nn.Module, tmp: Path, tokenizer_source: str | Path | None) -> bool | None:
    """config.json (+ tokenizer files) of an HF model into ``tmp``; whether ``from_pretrained`` can
    rebuild it (None: not an HF model)."""
    hf = _hf_config_dict(model)
    if hf is None:
        return None
    expressible = _hf_expressible(model)
    if not expressible:
        hf = dict(hf)
        # An unknown model_type makes AutoConfig raise a ValueError (which AutoTokenizer tolerates, so
        # the tokenizer still loads); string widths stop a concrete class such as
        # BertForSequenceClassification.from_pretrained as well.
        hf["model_type"] = f"prunekit-pruned-{hf.get('model_type')}"
        aliases = getattr(model.config, "attribute_map", None) or {}
        for key in (*HF_WIDTH_KEYS, *(aliases[k] for k in HF_WIDTH_KEYS if k in aliases)):
            if key in hf:
                hf[key] = NOT_EXPRESSIBLE
        hf["prunekit_note"] = NOT_EXPRESSIBLE
    (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    if tokenizer_source is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_source) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
    return expressible


def save_remote_code(model: nn.Module, tmp: Path) -> None:
    """A remote-code HF model (its classes live in transformers' dynamic modules) travels with its
    code, so that a caller who trusts it loads that code from the checkpoint folder and nowhere else."""
    config = getattr(model, "config", None)
    objects = [o for o in (model, config) if type(o).__module__.startswith("transformers_modules.")]
    if objects:
        from transformers.dynamic_module_utils import custom_object_save

        for obj in objects:
            custom_object_save(obj, tmp)
