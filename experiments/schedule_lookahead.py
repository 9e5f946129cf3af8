"""What the constant_gap schedule sees: the stated bound of the quickstart model masked at fixed weights.

The constant_gap schedule sizes each step by a look-ahead: the predicted gap (the stated bound, from the
``Estimator`` at fixed weights, Level 2) of the planned model must stay within ``tolerance`` of the dense
model's. This script measures that look-ahead on the quickstart's dense cnn1d (MNIST-1D standard, its
recipe, seed 0): for uniform plans at 1/16 .. 1/2 params saved (the first step sizes constant_gap tries
toward the 50 % level: the whole way, then halves), the bound with the BatchNorm statistics left as
they were (stale) and re-estimated on the probe batches (what the schedule does since 5d26712), and
which of those steps each tolerance would accept. Train split only; one thread.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python experiments/schedule_lookahead.py

writes results/schedule_lookahead.{md,json}. The dense model is trained once into
runs/schedule_lookahead (``prunekit run configs/quickstart.yaml`` with the overrides below) and reused.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OVERRIDES = [
    "prune.planner=uniform",
    "prune.planner_options={}",
    "prune.schedule.name=one_shot",
    "prune.levels=[0.5]",
    "estimate.enabled=false",
    "finetune.epochs=1",
]
SAVED = (0.0625, 0.125, 0.25, 0.5)
TOLERANCES = (0.25, 0.5, 1.0, 2.0)


def dense_model(folder: Path):
    from prunekit.config import load_config
    from prunekit.pipeline import run
    from prunekit.pruning.checkpoint import load

    cfg = load_config(ROOT / "configs/quickstart.yaml", OVERRIDES)
    if not (folder / "dense" / "model.safetensors").is_file():
        run(cfg, output_dir=folder)
    model, _ = load(folder / "dense")
    return cfg, model.eval()


def main() -> None:
    from prunekit.planner.masked import adapted_bn
    from prunekit.structure import find_groups, mask_groups
    from prunekit.task import Task, make_level_plan
    from prunekit.theory.estimator import Estimator

    cfg, model = dense_model(ROOT / "runs" / "schedule_lookahead")
    task = Task(cfg)
    groups = find_groups(model, task.example)
    est = Estimator(model, task.splits, cfg.estimate, groups=groups, seed=1)
    loader = task.loader("train", cfg.finetune.batch_size, shuffle=True, seed=1)
    probe = list(itertools.islice(loader, cfg.prune.importance_batches))  # as the schedule takes them
    dense = est.predict(None)
    rows = []
    for saved in SAVED:
        plan, _ = make_level_plan(task, model, saved, seed=1)
        removed = {g: sorted(set(range(plan.num_units[g])) - set(k)) for g, k in plan.keep.items()}
        removed = {g: u for g, u in removed.items() if u}
        stale = est.predict(removed)
        with mask_groups(model, groups, removed), adapted_bn(model, probe, True):
            fresh = est.predict(removed)
        rows.append(
            {
                "params_saved": plan.extra["achieved"]["params_saved"],
                **{f"stale_{k}": getattr(stale, k) for k in ("bound", "C_arch", "T_opt", "train_loss")},
                **{f"bn_{k}": getattr(fresh, k) for k in ("bound", "C_arch", "T_opt", "train_loss")},
            }
        )
        print(rows[-1], flush=True)
    out = {
        "command": "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python experiments/schedule_lookahead.py",
        "config": "configs/quickstart.yaml + " + " ".join(OVERRIDES),
        "dense": {k: getattr(dense, k) for k in ("bound", "C_arch", "T_opt", "train_loss")},
        "rows": rows,
    }
    (ROOT / "results" / "schedule_lookahead.json").write_text(json.dumps(out, indent=2))
    (ROOT / "results" / "schedule_lookahead.md").write_text(markdown(out))


def markdown(out: dict) -> str:
    d = out["dense"]
    lines = [
        "# The constant_gap schedule's look-ahead on the quickstart model",
        "",
        f"`{out['command']}` ({out['config']}).",
        "",
        f"Dense model: stated bound {d['bound']:.4f} (C_arch {d['C_arch']:.1f}, T_opt {d['T_opt']:.4g}, "
        f"probe loss {d['train_loss']:.3f}). Uniform plans masked at the dense weights:",
        "",
        "| params saved | bound, stale BN | T_opt, stale | bound, BN re-estimated | T_opt, re-estimated | probe loss stale / re-est. |"
        + "".join(f" accepted at tol. {t:g} |" for t in TOLERANCES),
        "|---|---|---|---|---|---|" + "---|" * len(TOLERANCES),
    ]
    for r in out["rows"]:
        ok = ["yes" if r["bn_bound"] <= d["bound"] * (1 + t) else "no" for t in TOLERANCES]
        lines.append(
            f"| {100 * r['params_saved']:.1f} % | {r['stale_bound']:.4f} | {r['stale_T_opt']:.4g} | "
            f"{r['bn_bound']:.4f} | {r['bn_T_opt']:.4g} | {r['stale_train_loss']:.3f} / "
            f"{r['bn_train_loss']:.3f} |" + "".join(f" {o} |" for o in ok)
        )
    first = out["rows"][0]
    lines += [
        "",
        "The bound rises at once, through T_opt (the masked model is off its minimum), not through C_arch. "
        f"At the smallest step constant_gap tries toward 50 % ({100 * first['params_saved']:.1f} % saved) "
        f"the re-estimated bound is {first['bn_bound'] / d['bound']:.2f}× the dense one, so with the "
        "default tolerance (0.25) the schedule holds at 0 % saved and says so; it takes steps only with a "
        "tolerance of the size in the table. On this model the look-ahead at fixed weights is a poor "
        "guide to step sizes: a linear schedule is the working choice (configs/quickstart.yaml).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
