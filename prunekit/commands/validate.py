"""``prunekit validate CONFIG``: the validity study for a user's own model and data.

CONFIG is any run config plus an optional ``validate:`` section (:mod:`prunekit.studies.config`). The
study is resumable like ``prunekit run``: the same command continues where a killed one stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def validate_command(
    config: str | Path, overrides: list[str] | None = None, output: str | None = None
) -> dict[str, Any]:
    """Run (or resume) the study; print where the report is and the verdict in a few lines."""
    from prunekit.studies.config import load_study_config
    from prunekit.studies.validity import run_study

    cfg, v = load_study_config(config, overrides)
    command = " ".join(["prunekit validate", str(config), *(f"--set {o}" for o in overrides or [])])
    report = run_study(cfg, v, output, command=command)
    ver, means = report["verdict"], report["summary"]["mean_aligned_tau"]
    best = ver["best_predictor"]
    print(
        f"validate: best predictor within budgets {best} (mean aligned tau {means.get(best, float('nan')):+.2f}); "
        f"stated bound {_f(means.get('bound'))}; goal {'met' if ver['goal_met'] else 'NOT met'}; "
        f"report: {report['folder']}/report.md",
        file=sys.stderr,
    )
    return report


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"
