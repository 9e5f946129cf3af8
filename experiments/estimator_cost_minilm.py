"""Estimator cost on the pretrained MiniLM (22.7M params) against one fine-tuning epoch on tweets.

Complements experiments/estimator_cost.py (1-D CNNs, 0.03M-6M params) with the transformer the
issue names. On a 2-core CPU, MiniLM's full-size estimates take hours, so each estimator is timed
at a few probes / iterations on a small probe set and scaled linearly (a Hutchinson probe, a
Hessian-vector product and a power iteration each cost a fixed number of backward passes over the
probe set, so the cost is linear in probes and in inputs); the scaling is stated in every cell.

- per-group NTK traces (``group_ntk_traces``; groups: MiniLM's 6x12 heads and 6 FFN blocks):
  timed at 2 probes on 16 inputs, scaled to 512 probes on 256 inputs;
- Hessian trace: 2 probes on 16 inputs, scaled to 100 probes on 256 inputs;
- top Hessian eigenvalue: 2 power iterations on 16 inputs, scaled to 20 on 256;
- NTK Gram + spectrum: timed on 8 inputs (3 logits, so a 24-row Jacobian); not extrapolated: the
  CNN study measured its growth as params^1.5 and n^1.4, which puts 256 inputs at many hours;
- one fine-tuning epoch: 12 timed optimizer steps (batch 32 x 64 tokens, after 2 warm-up steps),
  scaled to the 2,400 training tweets of configs/minilm_tweets.yaml (75 steps).

Usage:  python experiments/estimator_cost_minilm.py [--out results/estimator_cost_minilm]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.batch import take
from prunekit.config import DataConfig, ModelConfig
from prunekit.data import load_data
from prunekit.models import build_model
from prunekit.pruning import find_groups
from prunekit.theory.hessian import hessian_trace, top_eigenvalue
from prunekit.theory.ntk import group_ntk_traces, ntk_gram
from prunekit.theory.spectrum import ntk_spectrum

IGNORE = ["*embeddings*", "classifier", "*pooler*"]


def timed(fn, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    c0 = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c0


def epoch_seconds(model: torch.nn.Module, loader, steps: int, total_steps: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    model.train()
    it = iter(loader)
    spent = 0.0
    for i in range(steps + 2):
        x, y = next(it)
        c0 = time.process_time()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(**x).logits, y).backward()
        opt.step()
        if i >= 2:  # the first steps pay one-off allocation costs
            spent += time.process_time() - c0
    model.eval()
    return spent / steps * total_steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/estimator_cost_minilm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = load_data(
        DataConfig(name="tweet_sentiment", max_train_samples=2400, max_length=64),
        seed=0,
        model_cfg=ModelConfig(name="minilm"),
    )
    model = build_model(ModelConfig(name="minilm"), splits.num_classes, splits.input_shape).eval()
    params = sum(p.numel() for p in model.parameters())
    x, y = take(splits.loader("train", 16), 16)
    groups = find_groups(model, {k: v[:2] for k, v in x.items()}, ignore=IGNORE)
    hessian_trace(model, [({k: v[:2] for k, v in x.items()}, y[:2])], num_probes=1)  # warm-up
    rows: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2 + 3-class head",
        "params": params,
        "groups": len(groups),
    }
    _, t = timed(group_ntk_traces, model, (x, y), groups, num_probes=2)
    rows["ntk_traces_512_on_256"] = {
        "cpu_s": t * (512 / 2) * (256 / 16),
        "measured": "2 probes, 16 inputs",
        "measured_cpu_s": t,
    }
    _, t = timed(hessian_trace, model, [(x, y)], num_probes=2)
    rows["hessian_trace_100_on_256"] = {
        "cpu_s": t * (100 / 2) * (256 / 16),
        "measured": "2 probes, 16 inputs",
        "measured_cpu_s": t,
    }
    _, t = timed(top_eigenvalue, model, [(x, y)], iters=2, tol=1e-300)
    rows["top_eigenvalue_20_on_256"] = {
        "cpu_s": t * (20 / 2) * (256 / 16),
        "measured": "2 iterations, 16 inputs",
        "measured_cpu_s": t,
    }
    x8 = {k: v[:8] for k, v in x.items()}
    _, t = timed(lambda: ntk_spectrum(ntk_gram(model, (x8, y[:8]), output="trace")))
    rows["gram_8"] = {"cpu_s": t, "measured": "8 inputs"}
    steps = len(splits.loader("train", 32))
    rows["epoch"] = {
        "cpu_s": epoch_seconds(model, splits.loader("train", 32, shuffle=True, seed=0), 12, steps),
        "measured": f"12 of {steps} steps",
    }
    for k in ("ntk_traces_512_on_256", "hessian_trace_100_on_256", "top_eigenvalue_20_on_256", "gram_8"):
        rows[k]["epochs"] = rows[k]["cpu_s"] / rows["epoch"]["cpu_s"]
    result = {
        "rows": rows,
        "machine": f"{platform.machine()}, 2 shared cores, torch {torch.__version__}, 1 thread",
        "command": "python experiments/estimator_cost_minilm.py",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Estimator cost on MiniLM (22.7M params)",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}. CPU seconds (`time.process_time`).",
        "Each cell was measured small (see 'measured') and scaled linearly in probes and inputs.",
        "",
        "| estimator | CPU s | measured | as fine-tuning epochs |",
        "|---|---:|---|---:|",
    ]
    names = {
        "ntk_traces_512_on_256": "per-group NTK traces, 512 probes, 256 inputs",
        "hessian_trace_100_on_256": "Hessian trace, 100 probes, 256 inputs",
        "top_eigenvalue_20_on_256": "top Hessian eigenvalue, 20 iterations, 256 inputs",
        "gram_8": "NTK Gram + spectrum, 8 inputs only",
    }
    for k, name in names.items():
        r = rows[k]
        lines.append(f"| {name} | {r['cpu_s']:.0f} | {r['measured']} | {r['epochs']:.2f} |")
    lines += [
        f"| one fine-tuning epoch (2,400 tweets, batch 32) | {rows['epoch']['cpu_s']:.0f} | {rows['epoch']['measured']} | 1.00 |",
        "",
        f"{rows['groups']} groups (heads and FFN neurons of 6 layers; embeddings, pooler and classifier ignored).",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
