"""prunekit: theory-guided structured pruning in four stages — estimate, plan, prune, verify.

Imports are lazy (PEP 562) so that ``import prunekit`` and the CLI start fast and do not pull in
transformers or datasets until a stage needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from prunekit._version import __version__ as __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # config
    "RunConfig": "prunekit.config",
    "ConfigError": "prunekit.config",
    "UserError": "prunekit.errors",
    "load_config": "prunekit.config",
    # data and models
    "load_data": "prunekit.data",
    "build_model": "prunekit.models",
    "register_model": "prunekit.models",
    # estimate
    "estimate": "prunekit.theory",
    "Estimates": "prunekit.theory",
    "Estimator": "prunekit.theory",
    "Prediction": "prunekit.theory",
    "stated_bound": "prunekit.theory",
    "calibrate": "prunekit.theory",
    # plan
    "Target": "prunekit.planner",
    "make_plan": "prunekit.planner",
    "register_planner": "prunekit.planner",
    # vocabulary, plan and prune
    "Group": "prunekit.structure",
    "Plan": "prunekit.structure",
    "find_groups": "prunekit.structure",
    "remaining_size": "prunekit.structure",
    "mask_groups": "prunekit.structure",
    "apply_plan_": "prunekit.pruning",
    "compose_plans": "prunekit.pruning",
    "unit_scores": "prunekit.planner.importance",
    "save": "prunekit.pruning",
    "load": "prunekit.pruning",
    "checkpoint_info": "prunekit.pruning",
    # verify
    "finetune": "prunekit.train",
    "evaluate": "prunekit.train",
    "TrainingDiverged": "prunekit.train",
    "count_params": "prunekit.metrics",
    "count_macs": "prunekit.metrics",
    "measure_latency": "prunekit.metrics",
    # pipeline
    "run": "prunekit.pipeline",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
