"""Real checkpoints to attack: a tiny MLP (registry model) and a tiny BERT (HF), saved by prunekit.

Each case edits a saved folder the way an attacker or a careless copy would, then loads it; the
checks are that nothing runs, nothing big is allocated and the error is one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prunekit.batch import logits_of
from prunekit.config import ModelConfig
from prunekit.errors import UserError
from prunekit.models import build_model, describe
from prunekit.planner import Target, make_plan
from prunekit.pruning import apply_plan_
from prunekit.pruning.checkpoint import CheckpointError, save
from prunekit.structure import find_groups
from prunekit.testing import example_inputs_for, tiny_bert


def out(model: torch.nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(model.eval(), x)


def hf_reference(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "format": 1,
        "name": "hf",
        "kwargs": {},
        "num_classes": model.config.num_labels,
        "input_shape": [],
        "path": None,
        "trust_remote_code": False,
        "hf_config": model.config.to_dict(),
    }


def pruned_save(model: torch.nn.Module, x: Any, ref: dict, folder: Path, saved: float = 0.5) -> Path:
    groups = find_groups(model, x)
    plan = make_plan(model, groups, Target("params", saved), "uniform", example_inputs=x)
    apply_plan_(model, plan, x)
    return save(model.eval(), folder, plan, {"accuracy": 0.5}, ref, x)


def mlp_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    cfg = ModelConfig(name="mlp", kwargs={"hidden": [32, 16]})
    model = build_model(cfg, 10, (64,)).eval()
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    return pruned_save(model, x, describe(cfg, 10, (64,)), folder), model, x


def bert_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module, Any]:
    model = tiny_bert()
    x = example_inputs_for(model)
    return pruned_save(model, x, hf_reference(model), folder), model, x


def edit_meta(folder: Path, change) -> None:
    """Apply ``change(meta)`` to prunekit.json in place (weights and their hash untouched)."""
    path = folder / "prunekit.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


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
