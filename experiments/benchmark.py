"""The headline benchmark: every planner (and Torch-Pruning used directly) at the same size and budget.

For each task one dense model is trained with the task config's ``train`` recipe; then for every method,
level and fine-tuning seed the dense model is planned, pruned, fine-tuned with the config's ``finetune``
recipe (identical for every method: same epochs, same total optimizer steps), and evaluated on the test
split. The dense reference gets the same extra epochs. Results are appended to the JSON after every run,
so the same command resumes. Torch-Pruning is used as its README shows: ``MetaPruner`` with
``GroupMagnitudeImportance`` (local or global), ``pruning_ratio`` found by bisection to the params target,
the final classifier ignored.

    OMP_NUM_THREADS=1 python experiments/benchmark.py               # the default grid (CPU, ~1 h here)
    python experiments/benchmark.py --full                          # every task, level, method, 3 seeds
    python experiments/benchmark.py --tasks mnist1d --seeds 0 1 --levels 0.85 0.93
    python experiments/benchmark.py --report-only                   # rebuild the .md / .png from the .json

Writes results/benchmark.json (every run), results/benchmark.md (tables, planning vs fine-tuning
seconds, the goals checked against the numbers) and results/benchmark.png.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from benchmark_methods import DEFAULT, FULL, METHODS, ROOT, TASKS  # experiments/benchmark_methods.py
from torch import nn

from prunekit.config import load_config
from prunekit.metrics import count_params
from prunekit.planner import Target, make_plan, planner_config
from prunekit.pruning import apply_plan_
from prunekit.pruning.checkpoint import load, save
from prunekit.structure import find_groups
from prunekit.task import Task, seed_everything
from prunekit.train import make_accelerator


def _classifier(model: nn.Module, num_classes: int) -> nn.Module:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return heads[-1]


def tp_prune(model: nn.Module, example: Any, saved: float, global_pruning: bool, num_classes: int):
    """Torch-Pruning's MetaPruner + GroupMagnitudeImportance, pruning_ratio bisected to ``saved`` params."""
    import torch_pruning as tp

    dense = count_params(model)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            m,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            global_pruning=global_pruning,
            ignored_layers=[_classifier(m, num_classes)],
        )
        pruner.step()
        return m

    lo, hi = 0.0, 0.999
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        m = pruned(mid)
        s = 1 - count_params(m) / dense
        if best is None or abs(s - saved) < abs(best[1] - saved):
            best = (m, s, mid)
        if s < saved:
            lo = mid
        else:
            hi = mid
    return best[0], {"pruning_ratio": best[2]}


def tp_prune_iterative(
    model: nn.Module, example: Any, saved: float, num_classes: int, steps: int, total: int, train_fn: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning's linear iterative schedule: MetaPruner(iterative_steps=steps), one ``step()`` then
    a fine-tune of an equal share of the ``total`` optimizer steps (prunekit.schedule.share), ``steps``
    times. Local pruning removes a fixed count per layer whatever the weights, so the final size of a
    ratio is found by bisection on copies pruned through all steps without training."""
    import torch_pruning as tp

    from prunekit.schedule import share

    dense = count_params(model)

    def pruner(m: nn.Module, ratio: float) -> Any:
        return tp.pruner.MetaPruner(
            m,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            iterative_steps=steps,
            ignored_layers=[_classifier(m, num_classes)],
        )

    def final_saved(ratio: float) -> float:
        m = copy.deepcopy(model)
        p = pruner(m, ratio)
        for _ in range(steps):
            p.step()
        return 1 - count_params(m) / dense

    lo, hi, best = 0.0, 0.999, (0.0, 0.0)
    for _ in range(18):
        mid = (lo + hi) / 2
        s = final_saved(mid)
        if abs(s - saved) < abs(best[1] - saved):
            best = (mid, s)
        lo, hi = (mid, hi) if s < saved else (lo, mid)
    p, used, log = pruner(model, best[0]), 0, []
    for i in range(steps):
        p.step()
        n = share(total, used, steps - i)
        t0 = time.perf_counter()
        train_fn(model, n, i)
        used += n
        log.append(
            {
                "step": i,
                "saved": 1 - count_params(model) / dense,
                "train_steps": n,
                "finetune_seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return model, {"pruning_ratio": best[0], "schedule": "tp_linear", "steps": log, "train_steps": used}


class Bench:
    def __init__(self, name: str, spec: dict[str, Any], out: Path):
        cfg = load_config(ROOT / spec["config"], spec["overrides"])
        self.name, self.spec, self.cfg = name, spec, cfg
        self.metric = spec.get("metric", "params")
        seed_everything(cfg.seed)
        self.task = Task(cfg)
        self.acc = make_accelerator()
        self.folder = out / name
        self.dense = self._dense()
        loader = self.task.loader("train", cfg.finetune.batch_size, shuffle=True, seed=cfg.seed)
        self.batches = list(itertools.islice(loader, cfg.prune.importance_batches))

    def _dense(self) -> nn.Module:
        path = self.folder / "dense"
        if (path / "prunekit.json").is_file():
            return load(path)[0]
        model = self.task.build_dense()
        t0 = time.perf_counter()
        self.task.train(model, self.cfg.train, self.acc, seed=self.cfg.seed, desc=f"{self.name} dense")
        metrics = self.task.measure(model, self.acc) | {"seconds": time.perf_counter() - t0}
        save(model, path, None, metrics, self.task.base, self.task.example)
        print(f"[bench] {self.name}: dense accuracy {metrics['accuracy']:.4f}", flush=True)
        return model

    def plan(self, model: nn.Module, groups: Any, cfg: Any, level: float) -> Any:
        """``cfg``'s plan of ``model`` at ``level`` of this task's metric, on the task's batches."""
        return make_plan(
            model,
            groups,
            Target(self.metric, level),
            cfg,
            batches=self.batches,
            example_inputs=self.task.example,
            data=self.task.splits,
        )

    def prune(self, method: str, level: float, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        spec = METHODS[method]
        model = copy.deepcopy(self.dense).eval()
        if "tp" in spec:
            if self.metric != "params":
                raise ValueError("the Torch-Pruning reference is bisected to a params target only")
            num_classes = self.task.splits.num_classes
            return tp_prune(model, self.task.example, level, spec["tp"] == "global", num_classes)
        groups = find_groups(model, self.task.example, ignore=self.cfg.prune.ignore)
        # the plan seed is the run's: only `random` uses it, and its fine-tuning seeds then differ too
        plan_seed = seed if spec["planner"] == "random" else self.cfg.seed
        cfg = planner_config(spec["planner"], **{"seed": plan_seed, **spec["options"]})
        plan = self.plan(model, groups, cfg, level)
        apply_plan_(model, plan, self.task.example, groups=groups)
        keep = {g: len(k) for g, k in plan.keep.items()}
        return model, {"keep": keep, "predicted_gap": plan.predicted_gap}

    def scheduled(self, method: str, level: float, seed: int) -> tuple[nn.Module, dict[str, Any]]:
        """A scheduled method, fine-tuning included: prunekit's own level stage under the method's
        schedule (prunekit.level_stage.scheduled_level), or Torch-Pruning's iterative schedule; both
        share the one-shot fine-tune's optimizer steps over their steps. Step i fine-tunes with seed
        1000 + seed + 100 i (step 0 as the one-shot fine-tune)."""
        from prunekit.config import ScheduleConfig
        from prunekit.level_stage import scheduled_level
        from prunekit.train.loop import total_optimizer_steps

        spec, cfg = METHODS[method], self.cfg
        model = copy.deepcopy(self.dense).eval()
        loader = self.task.loader("train", cfg.finetune.batch_size, shuffle=True, seed=1000 + seed)
        total = total_optimizer_steps(cfg.finetune, len(loader), cfg.finetune.grad_accum_steps)
        if "tp" in spec:
            if self.metric != "params":
                raise ValueError("the Torch-Pruning reference is bisected to a params target only")

            def train_fn(m: nn.Module, n: int, i: int) -> dict[str, Any]:
                recipe = cfg.finetune.model_copy(update={"max_steps": n})
                return self.task.train(m, recipe, self.acc, seed=1000 + seed + 100 * i, desc=f"{method} {i}")

            nc = self.task.splits.num_classes
            return tp_prune_iterative(
                model, self.task.example, level, nc, spec["iterative_steps"], total, train_fn
            )
        prune = cfg.prune.model_copy(
            update={
                "planner": spec["planner"],
                "planner_options": dict(spec["options"]),
                "importance": spec.get("importance"),
                "metric": self.metric,
                "schedule": ScheduleConfig(**spec["schedule"]),
            }
        )
        task = copy.copy(self.task)  # the same data and model, with this method's prune section
        task.cfg = cfg.model_copy(update={"prune": prune})
        s = scheduled_level(task, model, level, 1000 + seed, self.acc)
        steps = [
            {
                k: st[k]
                for k in (
                    "step",
                    "target_saved",
                    "saved",
                    "train_steps",
                    "finetune_seconds",
                    "predicted_gap_planned",
                    "predicted_gap_after_finetune",
                    "keep",
                )
            }
            for st in s["steps"]
        ]
        note = {
            "schedule": spec["schedule"]["name"],
            "schedule_status": s["status"],
            "schedule_note": s["note"],
            "reference_gap": s["reference_gap"],
            "steps": steps,
            "train_steps": s["total_train_steps"],
            "keep": {g: len(k) for g, k in s["plan"].keep.items()},
        }
        return s["model"], note

    def run(self, method: str, level: float, seed: int) -> dict[str, Any]:
        from prunekit.train import evaluate

        seed_everything(seed)
        t0 = time.perf_counter()
        if "schedule" in METHODS.get(method, {}) or "iterative_steps" in METHODS.get(method, {}):
            model, note = self.scheduled(method, level, seed)
            ft_s = sum(st["finetune_seconds"] for st in note["steps"])
            plan_s = time.perf_counter() - t0 - ft_s  # planning (and the curves / gap estimates) alone
            before = None  # the model changes between steps; the steps record their own gaps
            hist = {"steps": note["train_steps"]}
        else:
            if method == "dense":
                model, note = copy.deepcopy(self.dense), {}
            else:
                model, note = self.prune(method, level, seed)
            plan_s = time.perf_counter() - t0
            before = evaluate(model, self.task.loader("test", self.cfg.data.batch_size), self.acc)["accuracy"]
            t1 = time.perf_counter()
            hist = self.task.train(
                model, self.cfg.finetune, self.acc, seed=1000 + seed, desc=f"{method} {level}"
            )
            ft_s = time.perf_counter() - t1
        m = self.task.measure(model, self.acc)
        dense_m = json.loads((self.folder / "dense" / "prunekit.json").read_text())["metrics"]
        return {
            "task": self.name,
            "method": method,
            "level": level,
            "seed": seed,
            "accuracy": m["accuracy"],
            "accuracy_before_finetune": before,
            "params": m["params"],
            "macs": m["macs"],
            "params_saved": 1 - m["params"] / dense_m["params"],
            "macs_saved": 1 - m["macs"] / dense_m["macs"],
            "latency_ms": m["latency_ms"],
            "dense_accuracy": dense_m["accuracy"],
            "plan_seconds": plan_s,
            "finetune_seconds": ft_s,
            "finetune_steps": hist.get("steps"),
            "val_accuracy": (hist.get("val_accuracy") or [None])[-1],
            **note,
        }


def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def _save(path: Path, runs: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1, default=float))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every task, level and method, 3 seeds")
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--levels", nargs="*", type=float)
    ap.add_argument("--seeds", nargs="*", type=int)
    ap.add_argument("--methods", nargs="*", choices=list(METHODS))
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmark.json"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "benchmark"), help="dense checkpoints")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    grid = FULL if args.full else DEFAULT
    tasks = args.tasks or grid["tasks"]
    seeds = args.seeds if args.seeds is not None else grid["seeds"]
    methods = args.methods or list(METHODS)
    out = Path(args.out)
    runs = _load(out)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "grid": {"tasks": tasks, "seeds": seeds, "methods": methods, "levels": args.levels},
    }
    if not args.report_only:
        for name in tasks:
            spec = TASKS[name]
            levels = args.levels or spec.get("levels") or grid["levels"]
            bench = Bench(name, spec, Path(args.work))
            done = {(r["task"], r["method"], r["level"], r["seed"]) for r in runs}
            jobs = [("dense", 0.0, s) for s in seeds] + [
                (m, lv, s) for lv in levels for s in seeds for m in methods if m not in spec.get("skip", [])
            ]
            for method, level, seed in jobs:
                if (name, method, level, seed) in done:
                    continue
                try:
                    r = bench.run(method, level, seed)
                except ValueError as err:  # an infeasible target for this method: recorded, not hidden
                    r = {"task": name, "method": method, "level": level, "seed": seed, "error": str(err)}
                runs.append(r)
                _save(out, runs, meta)
                acc = r.get("accuracy")
                print(
                    f"[bench] {name} {method} {level} seed {seed}: "
                    + (
                        f"{acc:.4f} ({r['params_saved']:.3f} saved, plan {r['plan_seconds']:.1f} s, "
                        f"ft {r['finetune_seconds']:.1f} s)"
                        if acc is not None
                        else r["error"]
                    ),
                    flush=True,
                )
    from benchmark_report import write_report  # experiments/benchmark_report.py

    targets = {name: spec.get("metric", "params") for name, spec in TASKS.items()}
    write_report(_load(out), out.with_suffix(".md"), out.with_suffix(".png"), targets)


if __name__ == "__main__":
    main()
