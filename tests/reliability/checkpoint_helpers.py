"""Real checkpoints to attack: a tiny MLP (registry model) and a tiny BERT (HF), saved by prunekit.

Each case edits a saved folder the way an attacker or a careless copy would, then loads it; the
checks are that nothing runs, nothing big is allocated and the error is one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from checkpoint_cases import edit_meta, hf_case, hf_reference, out, prune_uniform, registry_case

from prunekit.errors import UserError
from prunekit.pruning.checkpoint import CheckpointError, save
from prunekit.testing import tiny_bert

__all__ = ["bert_checkpoint", "edit_meta", "evil_folder", "hf_reference", "mlp_checkpoint", "one_line", "out"]


def pruned_save(model: torch.nn.Module, x: Any, ref: dict, folder: Path, saved: float = 0.5) -> Path:
    plan = prune_uniform(model, x, saved)
    return save(model.eval(), folder, plan, {"accuracy": 0.5}, ref, x)


def mlp_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    model, x, ref = registry_case("mlp", {"hidden": [32, 16]}, (64,))
    return pruned_save(model, x, ref, folder), model, x


def bert_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module, Any]:
    model, x, ref = hf_case(tiny_bert)
    return pruned_save(model, x, ref, folder), model, x


def one_line(err: BaseException) -> str:
    """The message of a refusal: a CheckpointError (a UserError, so the CLI exits 2), one short line."""
    assert isinstance(err, CheckpointError) and isinstance(err, UserError), type(err)
    text = str(err)
    assert "\n" not in text and 0 < len(text) < 600, text
    return text


def evil_folder(root: Path, marker: Path) -> Path:
    """An HF model folder whose remote code writes ``marker`` when imported (a live attack)."""
    root.mkdir(parents=True, exist_ok=True)
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n"
    (root / "configuration_evil.py").write_text(
        payload
        + "from transformers import BertConfig\n\n\nclass EvilConfig(BertConfig):\n    model_type = 'evil'\n"
    )
    (root / "modeling_evil.py").write_text(
        payload
        + "from transformers import BertForSequenceClassification\n"
        + "from .configuration_evil import EvilConfig\n\n\n"
        + "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n"
    )
    config = tiny_bert().config.to_dict() | {
        "model_type": "evil",
        "auto_map": {
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
        },
    }
    (root / "config.json").write_text(json.dumps(config))
    return root
