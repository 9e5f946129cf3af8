"""``Estimates``: the results of ``estimate()`` / ``Estimator.estimates()``, JSON-ready (estimate.json)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from prunekit.theory.bound import readable_version

ESTIMATES_FORMAT_VERSION = 1


@dataclass
class Estimates:
    """The estimators' results; ``to_dict()`` is JSON-ready (estimate.json)."""

    C_arch: float
    T_opt: float
    n: int
    d_eff: float
    bound: float | None  # None when T_opt <= 0 (indefinite Hessian off a minimum): see notes
    hessian_top_eigenvalue: float
    ntk: dict[str, Any]  # spectrum summary of the Gram (d_lambda, trace, lambda_max, effective ranks, decay)
    hessian: dict[str, Any]  # trace, trace_se, normalized_trace(_se), per_tensor, top eigenvalue details
    intrinsic_dim: dict[str, Any]  # twonn, levina_bickel, subsample curve
    groups: dict[str, dict[str, Any]]  # name -> ntk_trace(_se), hessian_trace(_se), per-unit lists
    top_groups_ntk: list[dict[str, Any]]
    top_groups_hessian: list[dict[str, Any]]
    # ntk_gram: the whole Jacobian pass (Gram, per-entry NTK and Gauss-Newton diagonals); ntk_group_traces:
    # their reduction to groups and units (or the Hutchinson probes), and so on per estimator, plus total
    seconds: dict[str, float]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    format_version: int = ESTIMATES_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimates:
        """Read back ``to_dict()`` output (e.g. estimate.json); extra keys such as ``model_source`` are ignored."""
        readable_version(d, ESTIMATES_FORMAT_VERSION, "estimates")
        optional = {"notes", "format_version"}
        missing = [k for k in cls.__dataclass_fields__ if k not in d and k not in optional]
        if missing:
            raise ValueError(
                f"estimates lack {', '.join(missing)}: not an estimate.json; rerun `prunekit estimate`"
            )
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def jsonable(x: Any) -> Any:
    """Floats, lists and dicts only: numpy/torch scalars and arrays become Python numbers; NaN/inf → None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
