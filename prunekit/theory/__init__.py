"""Estimators of the stated bound's quantities: NTK complexity, Hessian sharpness, intrinsic dimension.

``estimate(model, data, cfg)`` runs them all on the training split; the modules can be used one by one.
The estimator modules load lazily (PEP 562). ``estimate`` is imported eagerly because it shares its name
with its module: the function must win over the submodule attribute that importing the module sets.
"""

from __future__ import annotations

import importlib
from typing import Any

from prunekit.theory.estimate import Estimates as Estimates
from prunekit.theory.estimate import estimate as estimate

_EXPORTS: dict[str, str] = {
    # built once per model and data: full estimates and masked predictions
    "Estimator": "prunekit.theory.estimator",
    "Prediction": "prunekit.theory.estimator",
    # the bound
    "stated_bound": "prunekit.theory.bound",
    "calibrate": "prunekit.theory.bound",
    "Calibration": "prunekit.theory.bound",
    # NTK
    "group_ntk_traces": "prunekit.theory.ntk",
    "GroupTraces": "prunekit.theory.ntk",
    "ntk_gram": "prunekit.theory.ntk",
    "level1_gram": "prunekit.theory.ntk",
    "level1_trace_drop": "prunekit.theory.ntk",
    "level2_gram": "prunekit.theory.ntk",
    "ntk_spectrum": "prunekit.theory.spectrum",
    # Hessian
    "hessian_trace": "prunekit.theory.hessian",
    "hvp": "prunekit.theory.hessian",
    "top_eigenvalue": "prunekit.theory.hessian",
    "gauss_newton_top_eigenvalue": "prunekit.theory.hessian",
    # intrinsic dimension
    "twonn": "prunekit.theory.intrinsic_dim",
    "levina_bickel": "prunekit.theory.intrinsic_dim",
    "subsample_curve": "prunekit.theory.intrinsic_dim",
    "representation": "prunekit.theory.intrinsic_dim",
}

__all__ = sorted([*_EXPORTS, "Estimates", "estimate"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit.theory' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
