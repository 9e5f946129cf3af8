"""``prunekit plan CONFIG``: the plan of every level for the config's dense model; changes nothing.

It reuses the pipeline's :class:`~prunekit.task.Task`, so data, model and plans are built exactly as
``prunekit run`` builds them. Per level: the keep fraction of every group, params / MACs before and
after, the predicted gap (planners that predict one), the latency search (latency targets) and the
planning seconds; then the step schedule and the total planning cost. ``--json PATH`` writes all of it
with the sensitivity curves (or the greedy path) and the full plans; ``--plot PATH`` draws the keep
fractions and the curves (matplotlib, Agg).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prunekit.config import RunConfig
from prunekit.errors import UserError
from prunekit.pipeline import output_folder, setup_logging
from prunekit.task import Task, make_level_plan

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def check_outputs(json_path: str | Path | None, plot_path: str | Path | None) -> None:
    """One-line UserError for an output path that cannot be written, before any work starts."""
    paths = {"--json": json_path, "--plot": plot_path}
    for flag, raw in paths.items():
        if raw is None:
            continue
        p = Path(raw)
        if p.is_dir():
            raise UserError(f"{flag} {p} is a folder: give a file path, e.g. {p / 'plan'}.json")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"{flag} {p}: folder '{parent}' does not exist: create it or choose another path")
        if not os.access(parent, os.W_OK):
            raise UserError(f"{flag} {p}: folder '{parent}' is not writable: choose another path")
    if plot_path is not None and Path(plot_path).suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(
            f"--plot {plot_path}: give a {', '.join(PLOT_SUFFIXES)} file (the suffix picks the format)"
        )
    if (
        json_path is not None
        and plot_path is not None
        and Path(json_path).resolve() == Path(plot_path).resolve()
    ):
        raise UserError(f"--json and --plot are the same file ({json_path}): give two paths")


def _dense_model(task: Task, cfg: RunConfig, folder: Path) -> tuple[Any, str, float]:
    """The run's dense checkpoint when there is one, else the dense model trained here (never saved)."""
    from prunekit.train import make_accelerator

    t0 = time.perf_counter()
    if (folder / "dense" / "prunekit.json").is_file():
        from prunekit.pruning.checkpoint import load

        model, _ = load(folder / "dense", trust_remote_code=cfg.model.trust_remote_code)
        return model, str(folder / "dense"), 0.0
    model = task.build_dense()
    if cfg.train.epochs > 0:
        task.train(model, cfg.train, make_accelerator(), seed=cfg.seed, desc="dense")
    return model, "trained here" if cfg.train.epochs > 0 else "untrained", time.perf_counter() - t0


def _level_entry(level: float, plan: Any, groups: Any, sizes: Any, metric: str, seconds: float) -> dict:
    extra = plan.extra
    entry = {
        "level": level,
        "planner": plan.planner,
        "target": plan.target,
        "achieved": extra.get("achieved"),
        "keep": {g: f"{len(k)}/{plan.num_units[g]}" for g, k in plan.keep.items()},
        "keep_fraction": {g: len(k) / plan.num_units[g] for g, k in plan.keep.items()},
        "predicted_gap": plan.predicted_gap,
        "dense_predicted_gap": extra.get("dense_predicted_gap"),
        "seconds": round(seconds, 3),
        "kept_units": plan.keep,  # the unit indices: with num_units, the whole plan
    }
    if "latency" in extra:
        entry["latency"] = extra["latency"]
    if "curves" in extra:  # per-group curves: keep fraction -> the planner's quantity
        units = {g.name: g.num_units for g in groups}
        entry["curves"] = {
            name: {"keep_fraction": [c / units[name] for c in cv["counts"]], "values": cv["values"]}
            for name, cv in extra["curves"].items()
        }
    if "path" in extra:  # the joint greedy path: metric saved -> the quantity
        entry["path"] = [
            {"saved": sizes.saved(state["keep"], metric if metric != "latency" else "macs"), **state}
            for state in extra["path"]
        ]
    if extra.get("quantity"):
        entry["quantity"] = extra["quantity"]
    return entry


def schedule_summary(cfg: RunConfig, micro_batches_per_epoch: int) -> dict[str, Any]:
    """The step schedule of each level as far as it is known before running: fixed steps for
    ``one_shot`` / ``linear``, the rule and the budget for ``constant_gap`` (sized at run time)."""
    from prunekit.schedule import linear_targets, share
    from prunekit.train.loop import total_optimizer_steps

    s = cfg.prune.schedule
    total = total_optimizer_steps(cfg.finetune, micro_batches_per_epoch, cfg.finetune.grad_accum_steps)
    out: dict[str, Any] = {"name": s.name, "finetune_steps_per_level": total, "chain_levels": s.chain_levels}
    if s.name == "constant_gap":
        out |= {
            "max_steps": s.steps,
            "tolerance": s.tolerance,
            "reference": s.reference if s.reference is not None else "the dense model's predicted gap",
            "force": s.force,
            "rule": "each step tries the whole remaining way, then 1/2, 1/4, 1/8 of it, and takes the "
            "first whose predicted gap stays within the tolerance; steps get equal shares of what is left",
        }
        return out
    if s.chain_levels:
        out["note"] = (
            "chain_levels: the run plans each level from the previous level's fine-tuned model; the plans "
            "above are made from the dense model"
        )
    n = 1 if s.name == "one_shot" else s.steps
    levels = {}
    begin = 0.0
    for level in cfg.prune.levels:
        steps, used = [], 0
        targets = [level] if n == 1 else linear_targets(level, n, begin)
        begin = level if s.chain_levels else 0.0
        for i, t in enumerate(targets):
            k = share(total, used, n - i)
            used += k
            steps.append({"step": i, "target_saved": round(t, 6), "train_steps": k})
        levels[str(level)] = steps
    out["levels"] = levels
    return out


def plan_only(cfg: RunConfig, output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The plan entry of every level (see :func:`plan_report`)."""
    return plan_report(cfg, output_dir)["levels"]


def plan_report(
    cfg: RunConfig,
    output_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """The plan of every level for the dense model of ``cfg`` (trained if needed, never saved), the
    step schedule and the planning cost; written to ``json_path`` and drawn to ``plot_path`` if given."""
    from prunekit.planner import from_prune_config
    from prunekit.planner.allocate import SizeModel

    check_outputs(json_path, plot_path)
    from_prune_config(cfg.prune, cfg.seed)  # a bad planner or option fails before data or training
    setup_logging(None, True)
    task = Task(cfg)
    folder = output_folder(cfg, output_dir)
    model, source, train_seconds = _dense_model(task, cfg, folder)
    levels = []
    for i, level in enumerate(cfg.prune.levels):
        t0 = time.perf_counter()
        plan, groups = make_level_plan(task, model, level, cfg.seed * 1000 + i + 1)
        seconds = time.perf_counter() - t0
        sizes = SizeModel(model, groups, task.example)
        levels.append(_level_entry(level, plan, groups, sizes, cfg.prune.metric, seconds))
    batches = len(task.loader("train", cfg.finetune.batch_size))
    out = {
        "config": cfg.name,
        "planner": cfg.prune.planner,
        "metric": cfg.prune.metric,
        "dense": {"source": source, "train_seconds": round(train_seconds, 2)},
        "levels": levels,
        "schedule": schedule_summary(cfg, batches),
        "planning_seconds": round(sum(lv["seconds"] for lv in levels), 3),
    }
    if levels and levels[0]["achieved"]:
        a = levels[0]["achieved"]
        out["dense"] |= {"params": a["dense_params"], "macs": a["dense_macs"]}
    if json_path is not None:
        Path(json_path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    if plot_path is not None:
        plot_plan(out, plot_path)
    return out


def summary_lines(out: dict[str, Any]) -> list[str]:
    """The human-readable part of ``prunekit plan``'s output (one JSON line per level follows it)."""
    d = out["dense"]
    lines = [
        f"plan '{out['config']}': planner {out['planner']}, metric {out['metric']}; dense model "
        f"({d['source']}): {d.get('params', '?')} params, {d.get('macs', '?')} MACs"
    ]
    for lv in out["levels"]:
        a = lv["achieved"] or {}
        lines.append(
            f"level {lv['level']:g}: {a.get('params')} params ({a.get('params_saved', 0):.1%} saved), "
            f"{a.get('macs')} MACs ({a.get('macs_saved', 0):.1%} saved), planned in {lv['seconds']:.2f} s"
        )
        lines.append("  keep: " + ", ".join(f"{g} {f:.2f}" for g, f in lv["keep_fraction"].items()))
        if lv["predicted_gap"] is not None:
            dense_gap = lv["dense_predicted_gap"]
            ref = f" (dense {dense_gap:.4g})" if dense_gap is not None else ""
            lines.append(f"  predicted gap: {lv['predicted_gap']:.4g}{ref}")
        else:
            lines.append(f"  predicted gap: none (planner {lv['planner']} predicts none)")
        if "latency" in lv:
            L = lv["latency"]
            p = L["pruned"]
            lines.append(
                f"  latency: target {L['target_ms']:.3f} ms (keep {L['target_keep']:.2f}), achieved "
                f"{p['median_ms']:.3f} ms (keep {L['achieved_keep']:.3f}; spread {p['spread']:.2f}, median "
                f"±{p['median_error']:.1%}), within 5 %: {'yes' if L['within_tolerance'] else 'NO'}"
            )
    s = out["schedule"]
    if s["name"] == "constant_gap":
        lines.append(
            f"schedule constant_gap: at most {s['max_steps']} steps, tolerance {s['tolerance']:g}, "
            f"{s['finetune_steps_per_level']} fine-tuning steps per level shared over them (sized at run time)"
        )
    else:
        for level, steps in s["levels"].items():
            parts = ", ".join(f"{st['target_saved']:.3g} saved / {st['train_steps']} steps" for st in steps)
            lines.append(f"schedule {s['name']} level {level}: {parts}")
    if "note" in s:
        lines.append(f"  ({s['note']})")
    lines.append(f"planning cost: {out['planning_seconds']:.2f} s for {len(out['levels'])} level(s)")
    return lines


def level_lines(out: dict[str, Any]) -> list[str]:
    """One compact JSON line per level (without curves or paths), for scripts."""
    drop = ("curves", "path", "kept_units")
    return [
        json.dumps({k: v for k, v in lv.items() if k not in drop}, sort_keys=True) for lv in out["levels"]
    ]


def plot_plan(out: dict[str, Any], path: str | Path) -> None:
    """Keep fraction per group and level (left), the sensitivity curves or greedy path (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = out["levels"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(levels[0]["keep_fraction"]) if levels else []
    width = 0.8 / max(1, len(levels))
    for j, lv in enumerate(levels):
        xs = [i + j * width for i in range(len(names))]
        left.bar(xs, [lv["keep_fraction"][n] for n in names], width, label=f"level {lv['level']:g}")
    left.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(names))], names, rotation=45, ha="right", fontsize=7
    )
    left.set_ylabel("keep fraction")
    left.set_title(f"{out['planner']}: keep fraction per group")
    left.legend(fontsize=8)
    with_curves = next((lv for lv in levels if "curves" in lv), None)
    with_path = next((lv for lv in reversed(levels) if "path" in lv), None)  # the deepest: longest path
    if with_curves is not None:
        for name, cv in with_curves["curves"].items():
            right.plot(cv["keep_fraction"], cv["values"], marker="o", ms=3, label=name)
        right.set_xlabel("keep fraction of the group (others whole)")
        right.invert_xaxis()
        right.legend(fontsize=6)
    elif with_path is not None:
        states = with_path["path"]
        right.plot([p["saved"] for p in states], [p["value"] for p in states], marker="o", ms=3)
        for lv in levels:
            right.axvline(lv["level"], color="grey", lw=0.8, ls="--")
        right.set_xlabel(
            f"{out['metric'] if out['metric'] != 'latency' else 'MACs'} saved along the greedy path"
        )
    else:
        right.text(
            0.5, 0.5, f"planner '{out['planner']}' measures no sensitivity curves", ha="center", va="center"
        )
        right.set_axis_off()
    quantity = next((lv.get("quantity") for lv in levels if lv.get("quantity")), None)
    right.set_ylabel(quantity or "")
    right.set_title("sensitivity (fixed weights)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plan_command(
    cfg: RunConfig,
    output_dir: str | Path | None = None,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """``prunekit plan``: print the summary, then one JSON line per level; write / draw if asked."""
    out = plan_report(cfg, output_dir, json_path, plot_path)
    for line in summary_lines(out) + level_lines(out):
        print(line)
    if json_path is not None:
        print(f"wrote {json_path}")
    if plot_path is not None:
        print(f"wrote {plot_path}")
    return out
