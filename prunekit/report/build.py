"""``report.json``: what a run measured, in one JSON-able dict."""

from __future__ import annotations

from typing import Any

from prunekit._version import __version__
from prunekit.config import RunConfig

# Fields copied from each level's result; history and timings stay in state.json.
LEVEL_FIELDS = (
    "target",
    "params",
    "macs",
    "accuracy",
    "accuracy_before_finetune",
    "params_saved",
    "macs_saved",
    "latency_ms",
    "speedup",
    "speedup_per_mac_reduction",
    "predicted_gap",
    "predicted_gap_calibrated",
    "train_accuracy",
    "gap",
    "estimate",
    "checkpoint",
    # how the level was reached (prunekit.schedule): one_shot / linear / constant_gap, whether the
    # target was reached or held short, the checkpoint it started from, and one entry per step
    "schedule",
    "schedule_status",
    "schedule_note",
    "schedule_reference_gap",  # constant_gap: the predicted gap every step was held to (± tolerance)
    "starts_from",
    "total_train_steps",
    "steps",
    "latency_plan",  # a latency target: the planner's search, target ms, measured spread (planner/latency.py)
)
DENSE_FIELDS = (
    "params",
    "macs",
    "accuracy",
    "latency_ms",
    "predicted_gap",
    "predicted_gap_calibrated",
    "train_accuracy",
    "gap",
    "estimate",
)


def _without_timing(d: dict[str, Any]) -> dict[str, Any]:
    if isinstance(d.get("estimate"), dict):
        d = d | {"estimate": {k: v for k, v in d["estimate"].items() if k != "seconds"}}
    if isinstance(d.get("steps"), list):  # each step's fine-tuning seconds stay in state.json
        d = d | {"steps": [{k: v for k, v in s.items() if k != "finetune_seconds"} for s in d["steps"]]}
    return d


def build_report(cfg: RunConfig, dense: dict[str, Any], levels: list[dict[str, Any]]) -> dict[str, Any]:
    dense, levels = _without_timing(dense), [_without_timing(lv) for lv in levels]
    return {
        "task": cfg.data.name if cfg.data.name != "mnist1d" else f"mnist1d-{cfg.data.variant}",
        "model": cfg.model.name,
        "planner": cfg.prune.planner,
        "importance": cfg.prune.importance,
        "metric": cfg.prune.metric,
        "seed": cfg.seed,
        "name": cfg.name,
        "prunekit_version": __version__,
        "config_fingerprint": cfg.fingerprint(),
        "schedule": cfg.prune.schedule.model_dump(mode="json"),
        "dense": {k: dense.get(k) for k in DENSE_FIELDS} | {"checkpoint": "dense"},
        "levels": [{k: lv.get(k) for k in LEVEL_FIELDS} for lv in levels],
        # Estimator wall time is a measurement too; it stays in state.json, not in the report.
        # Latency is measured wall time on a shared machine: it varies run to run, unlike the rest.
        "volatile_fields": ["latency_ms", "speedup", "speedup_per_mac_reduction", "latency_plan"],
    }
