"""Models to checkpoint in tests, shared by tests/test_checkpoint.py and tests/reliability/.

Each ``*_case`` returns ``(model, example_inputs, base_reference)``: an eval-mode model, its inputs and
the base reference :func:`prunekit.pruning.checkpoint.save` stores (what ``describe`` gives for a
registry model, the ``hf`` reference for an HF one). Importable as ``checkpoint_cases`` because
tests/conftest.py puts this folder on ``sys.path``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prunekit.batch import logits_of
from prunekit.config import ModelConfig
from prunekit.models import build_model, describe
from prunekit.planner import Target, make_plan
from prunekit.pruning import apply_plan_
from prunekit.structure import Plan, find_groups
from prunekit.testing import example_inputs_for

Case = tuple[torch.nn.Module, Any, dict[str, Any]]


def out(model: torch.nn.Module, x: Any) -> torch.Tensor:
    """The model's logits on ``x`` in eval mode, without gradients."""
    with torch.no_grad():
        return logits_of(model.eval(), x)


def hf_reference(model: torch.nn.Module) -> dict[str, Any]:
    """The base reference of an HF model built from a config (what describe() stores for `hf`)."""
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


def registry_case(name: str, kwargs: dict[str, Any], input_shape: tuple[int, ...]) -> Case:
    """A registry model with 10 classes and two seeded random inputs."""
    cfg = ModelConfig(name=name, kwargs=kwargs)
    model = build_model(cfg, 10, input_shape).eval()
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    return model, x, describe(cfg, 10, input_shape)


def hf_case(factory: Callable[[], torch.nn.Module]) -> Case:
    """An HF model from a prunekit.testing factory, with its example inputs."""
    model = factory().eval()
    return model, example_inputs_for(model), hf_reference(model)


def prune_uniform(model: torch.nn.Module, x: Any, saved: float = 0.5) -> Plan:
    """Prune ``model`` in place with the uniform planner to ``saved`` of its parameters; the plan."""
    groups = find_groups(model, x)
    plan = make_plan(model, groups, Target("params", saved), "uniform", example_inputs=x)
    apply_plan_(model, plan, x)
    return plan


def edit_meta(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``change(meta)`` to prunekit.json in place (weights and their hash untouched)."""
    path = folder / "prunekit.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
