"""Does the bound predict? The validity study, for one task and several parameter budgets.

For each budget: ≥ 30 structured candidates of equal size (:mod:`prunekit.studies.candidates`), every
predictor on each before fine-tuning (:mod:`prunekit.studies.predictors`), the same fine-tuning recipe
for each with ≥ 2 seeds, then rank statistics within the budget and pooled (:mod:`prunekit.studies.analysis`).

Resumable: every candidate's plan, predictors and per-seed measurements are separate JSON files written
atomically under the output folder; a rerun reuses what is there. The dense model is a checkpoint
(``dense/``). The test split is only read for the final measurement of each fine-tuned candidate.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prunekit.atomic import write_json
from prunekit.config import ConfigError, RunConfig
from prunekit.studies.config import ValidateConfig, check_study

log = logging.getLogger("prunekit")


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _fingerprint(cfg: RunConfig, v: ValidateConfig) -> dict[str, Any]:
    d = cfg.model_dump(mode="json")
    d.pop("output_dir", None)
    vd = v.model_dump(mode="json")
    vd.pop("output_dir", None)
    return {"run": d, "validate": vd}


def _conflicts(old: Any, new: Any) -> bool:
    """Whether two stored configs disagree on a key both have (keys a newer prunekit added are no conflict)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return any(_conflicts(old[k], new[k]) for k in old.keys() & new.keys())
    return old != new


def _check_folder(folder: Path, fp: dict[str, Any]) -> None:
    old = _read(folder / "study_config.json")
    if old is not None and _conflicts(old, fp):
        raise ConfigError(
            f"'{folder}' holds a study with another config: give another output folder, or delete it to start over"
        )
    if old is None:
        write_json(folder / "study_config.json", fp)


def _check_budgets(task, v: ValidateConfig) -> None:
    """An unreachable budget (every layer at its floor still saves too little) fails before any work."""
    from prunekit.planner.allocate import SizeModel
    from prunekit.planner.target import TOLERANCE
    from prunekit.structure import find_groups
    from prunekit.studies.candidates import _floors

    model = task.build_dense()
    groups = find_groups(model, task.example, ignore=task.cfg.prune.ignore, experts=task.cfg.prune.experts)
    sizes = SizeModel(model, groups, task.example)
    best = sizes.saved(_floors(groups, v.min_keep_fraction), "params")
    for b in v.budgets:
        if best < b - TOLERANCE:
            raise ConfigError(
                f"validate.budgets: {b} saved cannot be reached (every layer at its floor saves {best:.3f}); "
                "lower the budget or validate.min_keep_fraction"
            )


def _dense(task, folder: Path, accelerator) -> tuple[torch.nn.Module, dict[str, Any]]:
    from prunekit.pruning import load, save

    cfg = task.cfg
    if (folder / "dense" / "prunekit.json").is_file():
        model, meta = load(folder / "dense")
        return model, meta["metrics"]
    model = task.build_dense()
    t0 = time.perf_counter()
    history = (
        task.train(model, cfg.train, accelerator, seed=cfg.seed, desc="dense") if cfg.train.epochs > 0 else {}
    )
    metrics = _measure(task, model, accelerator)
    metrics["train_seconds"] = time.perf_counter() - t0
    metrics["history"] = history
    save(model, folder / "dense", task.base_plan, metrics, task.base, task.example)
    model, _ = load(folder / "dense")
    return model, metrics


def _measure(task, model, accelerator) -> dict[str, float]:
    """Train and test loss and accuracy, and the gap (train − test accuracy); the only read of test."""
    from prunekit.train import evaluate

    bs = task.cfg.data.batch_size
    tr = evaluate(model, task.loader("train", bs), accelerator)
    te = evaluate(model, task.loader("test", bs), accelerator)
    return {
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "test_loss": te["loss"],
        "test_accuracy": te["accuracy"],
        "gap": tr["accuracy"] - te["accuracy"],
        "loss_gap": te["loss"] - tr["loss"],
    }


def _dense_estimates(task, model, groups, folder: Path, accelerator) -> dict[str, Any]:
    from prunekit.theory import estimate

    path = folder / "dense" / "estimate.json"
    if path.is_file():
        return _read(path)
    est = estimate(
        model, task.splits, task.cfg.estimate, groups=groups, accelerator=accelerator, seed=task.cfg.seed
    )
    d = est.to_dict()
    write_json(path, d)
    return d


def _proxy_batch(task, num: int):
    from prunekit.theory.estimate import balanced_order
    from prunekit.theory.probe_data import train_rows

    idx = balanced_order(task.splits.labels("train"), task.cfg.seed + 1)[:num]
    return train_rows(task.splits, idx)


def _candidates(task, model, groups, v: ValidateConfig, folder: Path) -> dict[float, list[dict[str, Any]]]:
    """The candidate plans of every budget, built once and stored (plans.json per budget)."""
    from prunekit.structure import Plan
    from prunekit.studies.candidates import CandidateBuilder

    loader = task.loader("train", task.cfg.finetune.batch_size, shuffle=True, seed=task.cfg.seed)
    batches = list(itertools.islice(loader, task.cfg.prune.importance_batches))
    builder = None
    out: dict[float, list[dict[str, Any]]] = {}
    for b in v.budgets:
        path = folder / f"budget-{b:g}" / "plans.json"
        stored = _read(path)
        if stored is None:
            builder = builder or CandidateBuilder(
                model,
                groups,
                task.example,
                batches,
                v.min_keep_fraction,
                task.cfg.seed,
                v.planners,
                task.cfg.estimate.probe_samples,
            )
            cands, dropped = builder.build(b, v.candidates)
            stored = {
                "candidates": [{"name": c.name, "family": c.family, "plan": c.plan.to_dict()} for c in cands],
                "dropped": dropped,
            }
            write_json(path, stored)
        if len(stored["candidates"]) < v.candidates:
            raise ConfigError(
                f"budget {b:g}: only {len(stored['candidates'])} distinct candidates within 1 % of the target "
                f"(asked for {v.candidates}); lower validate.candidates or use a model with more units"
            )
        out[b] = [{**c, "plan": Plan.from_dict(c["plan"])} for c in stored["candidates"]]
    return out


def _slug(name: str) -> str:
    return name.replace(":", "-").replace("/", "_")


def run_study(
    cfg: RunConfig,
    v: ValidateConfig,
    output_dir: str | Path | None = None,
    command: str | None = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the study; returns the report dict, also written to ``<folder>/report.json``.

    ``report_only``: measure nothing more; report the candidates finished so far (a study stopped early).
    """
    from prunekit.pipeline import setup_logging
    from prunekit.structure import find_groups
    from prunekit.studies.analysis import analyse
    from prunekit.studies.predictors import compute_predictors, sq_norm
    from prunekit.studies.report import write_study_report
    from prunekit.task import Task, seed_everything
    from prunekit.train import make_accelerator

    check_study(cfg, v)
    folder = Path(output_dir or v.output_dir or Path("runs") / f"validate-{cfg.name}")
    accelerator = make_accelerator(mixed_precision=cfg.finetune.mixed_precision, grad_accum_steps=1)
    seed_everything(cfg.seed)
    task = Task(cfg)
    _check_budgets(task, v)
    folder.mkdir(parents=True, exist_ok=True)
    _check_folder(folder, _fingerprint(cfg, v))
    setup_logging(None, True)

    dense, dense_metrics = _dense(task, folder, accelerator)
    groups = find_groups(dense, task.example, ignore=cfg.prune.ignore, experts=cfg.prune.experts)
    dense_est = _dense_estimates(task, dense, groups, folder, accelerator)
    cands = _candidates(task, dense, groups, v, folder)
    has_val = task.splits.size("validation") > 0
    ctx = {
        "splits": task.splits,
        "est_cfg": cfg.estimate,
        "seed": cfg.seed,
        "dense_sq_norm": sq_norm(dense),
        "dense_groups": dense_est["groups"],
        "dense_trace": float(dense_est["ntk"]["trace"]),
        "proxy_batch": _proxy_batch(task, v.proxy_samples),
        "example": task.example,
        "val_loader": task.loader("validation", cfg.data.batch_size) if has_val else None,
        "accelerator": accelerator,
    }
    # round-robin over budgets: a study stopped early has every budget measured on a prefix of its
    # (family-interleaved) candidates, rather than some budgets complete and others empty
    jobs = [
        (b, cands[b][i]) for i in range(max(map(len, cands.values()))) for b in v.budgets if i < len(cands[b])
    ]
    if report_only:
        jobs = []
    _announce(dense_metrics, dense_est, cfg, v, len(jobs))
    bar = tqdm(total=len(jobs) * (1 + len(v.seeds)), desc="validate", disable=False, mininterval=5)
    for b, c in jobs:
        cdir = folder / f"budget-{b:g}" / _slug(c["name"])
        pred = _read(cdir / "predictors.json")
        pruned = None
        if pred is None:
            pruned = _pruned(dense, c["plan"], task, groups)
            pred = compute_predictors(c["name"], pruned, c["plan"], ctx)
            write_json(cdir / "predictors.json", pred)
        bar.update(1)
        for s in v.seeds:
            if not (cdir / f"seed-{s}.json").is_file():
                model = _pruned(dense, c["plan"], task, groups)
                t0 = time.perf_counter()
                task.train(model, cfg.finetune, accelerator, seed=s, desc=c["name"])
                m = _measure(task, model, accelerator) | {"seconds": time.perf_counter() - t0}
                write_json(cdir / f"seed-{s}.json", m)
            bar.update(1)
        del pruned
    bar.close()
    records = _collect(folder, v, cands)
    report = analyse(records, v, dense_metrics, dense_est, cfg)
    report["candidates_planned"] = {f"{b:g}": len(cands[b]) for b in v.budgets}
    report["complete"] = len(records) == sum(len(c) for c in cands.values())
    report["folder"] = str(folder)
    write_study_report(folder, report, records, command)
    return report


def _pruned(dense, plan, task, groups):
    from prunekit.pruning import apply_plan_

    model = copy.deepcopy(dense)
    apply_plan_(model, plan, task.example, groups=groups)
    return model


def _announce(dense_metrics, dense_est, cfg: RunConfig, v: ValidateConfig, n_jobs: int) -> None:
    """A time estimate before the candidates start: dense training speed × the recipe, + one estimate each."""
    hist = dense_metrics.get("history") or {}
    per_epoch = (hist.get("seconds") or dense_metrics.get("train_seconds") or 0.0) / max(
        cfg.train.epochs, 1e-9
    )
    ft = per_epoch * cfg.finetune.epochs * 1.2  # pruned models train faster; validation passes cost more
    est = float(dense_est.get("seconds", {}).get("total", 0.0)) * 1.5  # + proxies and a validation pass
    total = n_jobs * (est + ft * len(v.seeds))
    log.info(
        "validate: %d candidates x %d seeds (%d budgets); about %.0f min (%.1f s estimates + %.1f s per fine-tune each)",
        n_jobs,
        len(v.seeds),
        len(v.budgets),
        total / 60,
        est,
        ft,
    )


def _collect(folder: Path, v: ValidateConfig, cands) -> list[dict[str, Any]]:
    from prunekit.studies.predictors import with_derived

    out = []
    for b in v.budgets:
        for c in cands[b]:
            cdir = folder / f"budget-{b:g}" / _slug(c["name"])
            seeds = {str(s): _read(cdir / f"seed-{s}.json") for s in v.seeds}
            if any(x is None for x in seeds.values()) or not (cdir / "predictors.json").is_file():
                continue  # not finished (a study reported before its end): left out, counted in the report
            out.append(
                {
                    "budget": b,
                    "name": c["name"],
                    "family": c["family"],
                    "params_saved": c["plan"].extra["achieved"]["params_saved"],
                    "predictors": with_derived(_read(cdir / "predictors.json")),
                    "seeds": seeds,
                }
            )
    return out
