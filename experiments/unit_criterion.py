"""Does the masked model's probe loss at fixed weights tell which within-group unit criterion to use?

For each task of the benchmark, its dense model (``runs/benchmark/<task>/dense``, made by
experiments/benchmark.py) is planned with ``uniform`` widths at each level and units chosen by each
criterion; the masked model (BatchNorm re-estimated on the probe, weights fixed) is scored by its mean
cross-entropy on the planner's probe batches (training data) and on the validation split. The
fine-tuned test accuracies of the same choices are the benchmark's ``uniform`` / ``uniform_hessian``
rows; this script only measures what is known before any fine-tuning.

    OMP_NUM_THREADS=1 python experiments/unit_criterion.py --tasks mnist1d fashion_resnet20

Writes results/unit_criterion.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from benchmark_methods import TASKS  # noqa: E402

from prunekit.config import load_config  # noqa: E402
from prunekit.planner import Target, make_plan, planner_config  # noqa: E402
from prunekit.planner.masked import adapted_bn  # noqa: E402
from prunekit.pruning.checkpoint import load  # noqa: E402
from prunekit.structure import find_groups  # noqa: E402
from prunekit.structure.masking import mask_groups  # noqa: E402
from prunekit.task import Task, seed_everything  # noqa: E402

CRITERIA = ("l2", "l1", "hessian", "taylor")


def _mean_loss(model: torch.nn.Module, batches) -> tuple[float, float]:
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
    return total / count, correct / count


def measure(task_name: str, levels: list[float], work: Path) -> list[dict]:
    spec = TASKS[task_name]
    cfg = load_config(ROOT / spec["config"], spec["overrides"])
    seed_everything(cfg.seed)
    task = Task(cfg)
    model = load(work / task_name / "dense")[0].eval()
    loader = task.loader("train", cfg.finetune.batch_size, shuffle=True, seed=cfg.seed)
    probe = list(itertools.islice(loader, cfg.prune.importance_batches))  # the planners' batches
    val = list(task.loader("validation", cfg.data.batch_size))
    groups = find_groups(model, task.example, ignore=cfg.prune.ignore)
    rows = []
    for level in levels:
        for crit in CRITERIA:
            t0 = time.perf_counter()
            plan = make_plan(
                model,
                groups,
                Target("params", level),
                planner_config("uniform", importance=crit, seed=cfg.seed),
                batches=probe,
                example_inputs=task.example,
            )
            removed = {g.name: sorted(set(range(g.num_units)) - set(plan.keep[g.name])) for g in groups}
            with mask_groups(model, groups, removed), adapted_bn(model, probe, True):
                probe_loss, probe_acc = _mean_loss(model, probe)
                val_loss, val_acc = _mean_loss(model, val)
            row = {
                "task": task_name,
                "level": level,
                "criterion": crit,
                "probe_loss": probe_loss,
                "probe_accuracy": probe_acc,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - t0,
            }
            print(
                f"[criterion] {task_name} {level:.2f} {crit}: probe loss {probe_loss:.3f}, "
                f"val loss {val_loss:.3f} / acc {val_acc:.3f}",
                flush=True,
            )
            rows.append(row)
    return rows


def write_md(rows: list[dict], path: Path) -> None:
    lines = [
        "# Within-group unit criteria at uniform widths, before fine-tuning",
        "",
        "Made by `OMP_NUM_THREADS=1 python experiments/unit_criterion.py` (see its docstring). The dense",
        "model of each benchmark task, uniform widths at each level, units chosen by each criterion; the",
        "masked model at fixed weights with BatchNorm re-estimated on the probe (the planners' training",
        "batches, `prune.importance_batches`):",
        "mean cross-entropy on the probe and on the validation split, validation accuracy.",
        "",
        "| task | params saved | criterion | probe loss | val loss | val accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['level']:.0%} | {r['criterion']} | {r['probe_loss']:.3f} | "
            f"{r['val_loss']:.3f} | {100 * r['val_accuracy']:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=["mnist1d", "fashion_resnet20"])
    ap.add_argument("--levels", nargs="*", type=float, default=[0.85, 0.93, 0.97])
    ap.add_argument("--work", default=str(ROOT / "runs" / "benchmark"))
    ap.add_argument("--out", default=str(ROOT / "results" / "unit_criterion.json"))
    args = ap.parse_args()
    rows = [r for t in args.tasks for r in measure(t, args.levels, Path(args.work))]
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    tmp.replace(out)
    write_md(rows, out.with_suffix(".md"))
    print(f"[criterion] {len(rows)} rows -> {out}")


if __name__ == "__main__":
    main()
