"""Does structured pruning turn MAC reductions into CPU speed-ups?

For three models — the MNIST-1D 1-D CNN (``cnn1d``), a Fashion-MNIST-shaped ResNet-20 (2-D, input
1x28x28) and MiniLM (BERT, batch 1 x 64 tokens) — plan with the ``uniform`` planner at each level, cut the
model with ``apply_plan_``, and measure params, MACs (per example) and single-thread CPU latency of the
dense and the pruned model. Latency does not depend on the weights' values, so the CNNs are randomly
initialised (seeded); MiniLM carries its bundled pretrained weights (with a new, random head).

Usage:  python experiments/prune_speed.py [--levels 0.5 0.7] [--rounds 3 --repeats 20] [--out results/prune_speed]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from prunekit.batch import logits_of
from prunekit.config import ModelConfig
from prunekit.metrics import count_macs, count_params, measure_latency
from prunekit.models import build_model
from prunekit.models.inputs import example_inputs
from prunekit.planner import Target, make_plan
from prunekit.pruning import apply_plan_
from prunekit.structure import find_groups

ROUND_MS = 250.0  # least wall time of timed passes per model per round

# name -> (registry name, kwargs, num_classes, input_shape, latency input description)
MODELS: dict[str, tuple[str, dict[str, Any], int, tuple[int, ...], str]] = {
    "cnn1d": ("cnn1d", {}, 10, (1, 40), "1 x (1, 40) signal"),
    "resnet20": ("resnet20", {}, 10, (1, 28, 28), "1 x (1, 28, 28) image"),
    "minilm": ("minilm", {}, 3, (64,), "1 x 64 tokens"),
}


def _cpu_time_ms(model: torch.nn.Module, inputs: Any, repeats: int, warmup: int) -> float:
    """Median CPU time of the calling thread per forward pass (1 intra-op thread, so all the work runs on
    it). Unlike wall-clock time it does not count the time other jobs hold the core."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                logits_of(model, inputs)
            times = []
            for _ in range(repeats):
                start = time.thread_time()
                logits_of(model, inputs)
                times.append((time.thread_time() - start) * 1e3)
    finally:
        torch.set_num_threads(old)
    return float(np.median(times))


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def measure_model(key: str, levels: list[float], rounds: int, repeats: int, warmup: int) -> dict[str, Any]:
    name, kwargs, classes, shape, desc = MODELS[key]
    model = build_model(ModelConfig(name=name, kwargs=kwargs), classes, shape, seed=0).eval()
    plan_inputs = example_inputs(model, shape, batch=2)
    lat_inputs = example_inputs(model, shape, batch=1)
    groups = find_groups(model, plan_inputs)
    dense = {"params": count_params(model), "macs": count_macs(model, lat_inputs)}
    variants, rows = [model], []
    for level in levels:
        metric, note = "params", ""
        t0 = time.perf_counter()
        try:
            plan = make_plan(model, groups, Target("params", level), "uniform", example_inputs=plan_inputs)
        except ValueError as err:  # e.g. MiniLM: half its params are embeddings, which are not pruned
            metric, note = "macs", f"params target infeasible ({err}); MACs target used instead"
            plan = make_plan(model, groups, Target("macs", level), "uniform", example_inputs=plan_inputs)
        plan_s = time.perf_counter() - t0
        pruned = apply_plan_(copy.deepcopy(model), plan, plan_inputs, groups=groups)
        variants.append(pruned)
        params, macs = count_params(pruned), count_macs(pruned, lat_inputs)
        rows.append(
            {
                "level": level,
                "metric": metric,
                "note": note,
                "plan_seconds": plan_s,
                "keep_fraction": plan.extra.get("keep_fraction"),
                "params": params,
                "macs": macs,
                "params_saved": 1 - params / dense["params"],
                "macs_saved": 1 - macs / dense["macs"],
                "mac_reduction": dense["macs"] / macs,
            }
        )
    # fast models get more passes per round (>= ROUND_MS of work), so that timer and scheduler noise
    # average out; then interleave the variants round by round, so that load on the machine hits them alike
    probe_ms = measure_latency(model, lat_inputs, repeats=5, warmup=3, threads=1)["median_ms"]
    repeats = max(repeats, min(2000, math.ceil(ROUND_MS / max(probe_ms, 1e-3))))
    medians: list[list[float]] = [[] for _ in variants]
    cpu_ms: list[list[float]] = [[] for _ in variants]
    for _ in range(rounds):
        for i, v in enumerate(variants):
            lat = measure_latency(v, lat_inputs, repeats=repeats, warmup=warmup, threads=1)
            medians[i].append(lat["median_ms"])
            cpu_ms[i].append(_cpu_time_ms(v, lat_inputs, repeats, warmup=2))
    dense["repeats"] = repeats

    def summary(ms: list[float], cpu: list[float]) -> dict[str, float]:
        return {
            "median_ms": float(np.median(ms)),
            "min_round_ms": min(ms),
            "max_round_ms": max(ms),
            "cpu_ms": float(np.median(cpu)),
        }

    dense.update(summary(medians[0], cpu_ms[0]))
    for row, ms, cpu in zip(rows, medians[1:], cpu_ms[1:], strict=True):
        row.update(summary(ms, cpu))
        # paired by round: dense and pruned were timed back to back, so their ratio cancels slow drifts
        row["speedup"] = float(np.median([d / p for d, p in zip(medians[0], ms, strict=True)]))
        row["speedup_best_round"] = dense["min_round_ms"] / row["min_round_ms"]
        row["cpu_speedup"] = float(np.median([d / p for d, p in zip(cpu_ms[0], cpu, strict=True)]))
        row["round_speedups"] = [d / p for d, p in zip(medians[0], ms, strict=True)]
        row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
        row["cpu_speedup_per_mac_reduction"] = row["cpu_speedup"] / row["mac_reduction"]
    return {"model": key, "input": desc, "groups": len(groups), "dense": dense, "pruned": rows}


def to_markdown(results: list[dict[str, Any]], command: str, machine: dict[str, Any], settings: dict) -> str:
    lines = [
        "# Pruning speed: params, MACs and CPU latency, dense vs uniform-pruned",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs shared with other jobs, "
        f"torch {machine['torch']}, Python {machine['python']}.",
        "",
        f"Latency: one intra-op thread, batch 1, eval mode, no grad; {settings['warmup']} warm-up passes then "
        f"at least {settings['repeats']} timed passes (more for fast models, so that each round times "
        f"≥ {ROUND_MS:.0f} ms; see `repeats` in the JSON) with `prunekit.metrics.measure_latency`, in {settings['rounds']} "
        "rounds that interleave the dense and pruned models. *wall ms* is the median of the round medians "
        "[fastest–slowest round]; *speed-up* is the median over rounds of dense ÷ pruned time within the "
        "same round (in brackets: fastest dense round ÷ fastest pruned round). Because the machine is shared, wall time includes waiting for the core; "
        "*CPU ms* (median thread CPU time per pass, `time.thread_time`) does not, though it still moves "
        "with cache sharing and clock speed; its speed-up is paired by round too. Expect run-to-run changes "
        "of tens of percent in every latency column on this machine; params and MACs are exact.",
        "",
        "Weights: cnn1d and resnet20 are randomly initialised (seeded): latency does not depend on weight "
        "values. MiniLM uses its bundled pretrained weights with a new classification head. MACs are per "
        "example at the latency input size. Planner: `uniform` (same keep fraction in every group, L2 "
        "magnitude within groups, min keep fraction 0.05).",
        "",
        "| model | input | level | target | params | MACs | params saved | MACs saved | wall ms | CPU ms "
        "| MAC reduction | speed-up (wall) | speed-up (CPU) | wall speed-up ÷ MAC reduction "
        "| CPU speed-up ÷ MAC reduction |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d = r["dense"]
        wall = f"{d['median_ms']:.3f} [{d['min_round_ms']:.3f}–{d['max_round_ms']:.3f}]"
        lines.append(
            f"| {r['model']} | {r['input']} | dense | – | {d['params']:,} | {d['macs']:,} | – | – | {wall} "
            f"| {d['cpu_ms']:.3f} | 1.00 | 1.00 | 1.00 | – | – |"
        )
        for p in r["pruned"]:
            wall = f"{p['median_ms']:.3f} [{p['min_round_ms']:.3f}–{p['max_round_ms']:.3f}]"
            lines.append(
                f"| {r['model']} | {r['input']} | {p['level']:.0%} | {p['metric']} | {p['params']:,} "
                f"| {p['macs']:,} | {p['params_saved']:.1%} | {p['macs_saved']:.1%} | {wall} | {p['cpu_ms']:.3f} "
                f"| {p['mac_reduction']:.2f} | {p['speedup']:.2f} ({p['speedup_best_round']:.2f}) "
                f"| {p['cpu_speedup']:.2f} | {p['speedup_per_mac_reduction']:.2f} "
                f"| {p['cpu_speedup_per_mac_reduction']:.2f} |"
            )
    notes = [
        f"- {r['model']} {p['level']:.0%}: {p['note']}" for r in results for p in r["pruned"] if p["note"]
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--levels", nargs="+", type=float, default=[0.5, 0.7])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="results/prune_speed")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    command = "python experiments/prune_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    settings = {"rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup, "threads": 1}
    results = [
        measure_model(k, args.levels, args.rounds, args.repeats, args.warmup)
        for k in tqdm(args.models, desc="models", disable=not sys.stderr.isatty())
    ]
    machine = _machine()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command.strip(), "machine": machine, "settings": settings, "results": results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(results, command.strip(), machine, settings))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
