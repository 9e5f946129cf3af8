"""The study's statistics: each predictor against the measured test accuracy and gap, within each budget
(the meaningful case) and pooled over budgets (the easy case: size alone orders budgets)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from prunekit.studies.predictors import DIRECTIONS, THEORY
from prunekit.studies.ranking import noise_ceiling, rank_agreement

HEADLINE = "bound"  # the theory's predictor whose τ the goal is about
GOAL_TAU = 0.5


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def measured(record: dict[str, Any], key: str) -> float | None:
    return _mean([s[key] for s in record["seeds"].values() if s is not None])


def _group(records: list[dict[str, Any]], v, seed: int) -> dict[str, Any]:
    acc = [measured(r, "test_accuracy") for r in records]
    gap = [measured(r, "gap") for r in records]
    seeds = [str(s) for s in v.seeds[:2]]
    params = [r["predictors"]["params"] for r in records if r["predictors"] and r["predictors"].get("params")]
    per_seed = [[(r["seeds"].get(s) or {}).get("test_accuracy") for r in records] for s in seeds]
    out: dict[str, Any] = {
        "n_candidates": len(records),
        "accuracy_range": [min(a for a in acc if a is not None), max(a for a in acc if a is not None)],
        # equal size: the spread of the candidates' remaining params (the toolkit's 1 % is of the dense total)
        "params_range": [min(params), max(params)] if params else None,
        "noise_ceiling": noise_ceiling(per_seed[0], per_seed[1], v.bootstrap, seed),
        "predictors": {},
    }
    for name, direction in DIRECTIONS.items():
        x = [(r["predictors"] or {}).get(name) for r in records]
        out["predictors"][name] = {
            "direction": direction,
            "accuracy": rank_agreement(x, acc, direction, v.bootstrap, v.permutations, seed).to_dict(),
            # a predictor claiming "larger is better" claims "larger means a smaller gap"
            "gap": rank_agreement(x, gap, -direction, v.bootstrap, v.permutations, seed).to_dict(),
        }
    return out


def _summary(groups: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean aligned τ (against accuracy) over budgets, per predictor; the ranking of predictors."""
    means = {}
    for name in DIRECTIONS:
        taus = [g["predictors"][name]["accuracy"]["aligned_tau"] for g in groups.values()]
        means[name] = _mean(taus)
    order = sorted((k for k in means if means[k] is not None), key=lambda k: -means[k])
    return {"mean_aligned_tau": means, "order": order}


def _verdict(groups: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    baselines = [k for k in DIRECTIONS if k not in THEORY]
    per_budget = {}
    for b, g in groups.items():
        head = g["predictors"][HEADLINE]["accuracy"]["aligned_tau"]
        best_base = max(
            (
                g["predictors"][k]["accuracy"]["aligned_tau"]
                for k in baselines
                if g["predictors"][k]["accuracy"]["aligned_tau"] is not None
            ),
            default=None,
        )
        per_budget[b] = {
            "bound_aligned_tau": head,
            "best_baseline_aligned_tau": best_base,
            "goal_met": head is not None and head >= GOAL_TAU and (best_base is None or head > best_base),
        }
    best = next((k for k in summary["order"] if k != "random"), None)
    return {
        "headline_predictor": HEADLINE,
        "goal": f"aligned Kendall tau >= {GOAL_TAU} with test accuracy in every budget and above every baseline",
        "per_budget": per_budget,
        "goal_met": all(p["goal_met"] for p in per_budget.values()),
        "best_predictor": best,
        "best_is_theory": best in THEORY,
    }


def calibration_records(records: list[dict[str, Any]]) -> tuple[list[dict[str, float]], int]:
    """(C, T, n, d_eff, gap) per candidate with a positive mean gap; and how many were dropped."""
    out, dropped = [], 0
    for r in records:
        p, gap = r["predictors"] or {}, measured(r, "gap")
        if gap is None or gap <= 0 or not p.get("C_arch") or not p.get("T_opt") or p["T_opt"] <= 0:
            dropped += 1
            continue
        out.append({"C": p["C_arch"], "T": p["T_opt"], "n": p["n"], "d_eff": p["d_eff"], "gap": gap})
    return out, dropped


def fit_calibration(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The calibrated form on this task's candidates (C and T free; n and d_eff are constant here)."""
    from prunekit.theory import calibrate

    recs, dropped = calibration_records(records)
    out: dict[str, Any] = {"records": len(recs), "dropped_non_positive_gap": dropped}
    for label, preds in (("C_T", ("C", "T")), ("CT", ("CT",)), ("C", ("C",)), ("T", ("T",))):
        try:
            out[label] = calibrate(recs, predictors=list(preds)).to_dict()
        except ValueError as err:
            out[label] = {"error": str(err)}
    return out


def analyse(records: list[dict[str, Any]], v, dense_metrics, dense_est, cfg) -> dict[str, Any]:
    """The study's report dict (report.json)."""
    seed = cfg.seed
    budgets = sorted({r["budget"] for r in records})
    groups = {f"{b:g}": _group([r for r in records if r["budget"] == b], v, seed) for b in budgets}
    summary = _summary(groups)
    return {
        "task": {
            "data": cfg.data.name,
            "variant": cfg.data.variant,
            "model": cfg.model.name,
            "name": cfg.name,
        },
        "recipe": {"train": cfg.train.model_dump(), "finetune": cfg.finetune.model_dump()},
        "data": {
            "max_train_samples": cfg.data.max_train_samples,
            "n": dense_est["n"],
            "d_eff": dense_est["d_eff"],
        },
        "estimate_settings": cfg.estimate.model_dump(),
        "dense": {k: v for k, v in dense_metrics.items() if k != "history"},
        "budgets": groups,
        "pooled_easy_case": _group(records, v, seed),
        "summary": summary,
        "verdict": _verdict(groups, summary),
        "calibration": fit_calibration(records),
        "seeds": list(v.seeds),
    }
