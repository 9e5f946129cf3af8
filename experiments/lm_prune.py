"""Prune the tiny LLaMA (GQA heads, key-value heads, FFN neurons) to several params-saved levels with
several planners, recover briefly, and measure perplexity, params, MACs/token and CPU latency/token.

    OMP_NUM_THREADS=1 python experiments/lm_prune.py --model runs/tiny_llama --out results/lm

Needs a model trained by experiments/train_tiny_llama.py (its folder holds the tokenizer; the data split
is rebuilt deterministically from the same config). Every row starts from the same dense weights; the
dense model gets the same recovery budget as each pruned one (``dense+recovery``), so the comparison is
at equal training. Perplexity is exact over the whole test split; the unigram row is the add-one
unigram of the train tokens on the same predicted tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_llama import lm_data, read_config  # noqa: E402

import prunekit.planner.lm_importance  # noqa: E402,F401 (registers lm_taylor, wanda)
from prunekit.metrics.perplexity import latency_per_token, macs_per_token, perplexity, unigram_perplexity  # noqa: E402
from prunekit.models.causal_lm import check_vocab, load_causal_lm  # noqa: E402
from prunekit.planner import Target, make_plan, planner_config  # noqa: E402
from prunekit.pruning import apply_plan_  # noqa: E402
from prunekit.structure import find_groups  # noqa: E402
from prunekit.train.lm import LMTrainConfig, train_lm  # noqa: E402

PLANNERS = ("uniform:l2", "uniform:lm_taylor", "uniform:wanda", "global_magnitude")


def planner_of(spec: str, seed: int) -> Any:
    name, _, importance = spec.partition(":")
    options: dict[str, Any] = {"seed": seed, "num_batches": 8}
    if importance:
        options["importance"] = importance
    return planner_config(name, **options)


def measure(model: torch.nn.Module, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs_per_token": macs_per_token(model, data.block_size),
        "latency": latency_per_token(model, data.block_size, args.new_tokens, args.latency_repeats),
    }


def recover(model: torch.nn.Module, data: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cfg = LMTrainConfig(steps=args.recovery_steps, batch_size=16, lr=args.recovery_lr, warmup_steps=20)
    hist = train_lm(model, data.train, cfg, seed=seed, log=lambda s: None)
    return {"steps": hist["steps"], "seconds": hist["seconds"], "lr": args.recovery_lr}


def prune_row(spec: str, level: float, seed: int, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    model = load_causal_lm(args.model)
    example = data.example_inputs(1)
    groups = find_groups(model, example, ignore=args.ignore)
    calib = list(data.calibration.batches(16))
    t0 = time.perf_counter()
    plan = make_plan(model, groups, Target("params", level), planner_of(spec, seed), calib, example)
    plan_s = time.perf_counter() - t0
    apply_plan_(model, plan, example, groups)
    before = perplexity(model, data.test.batches(64))
    rec = recover(model, data, args, seed)
    after = perplexity(model, data.test.batches(64))
    kept = {g: len(k) for g, k in plan.keep.items()}
    return {
        "planner": spec,
        "level": level,
        "seed": seed,
        "plan_seconds": plan_s,
        "params_saved": plan.extra["achieved"]["params_saved"],
        "kept_units": kept,
        "test_before_recovery": before,
        "test_after_recovery": after,
        "recovery": rec,
        **measure(model, data, args),
    }


def dense_rows(data: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    model = load_causal_lm(args.model)
    check_vocab(model, data.tokenizer)
    measure(model, data, args)  # process warm-up (first-call allocations, kernel selection): discarded
    dense = {
        "planner": "dense",
        "level": 0.0,
        "params_saved": 0.0,
        "test_before_recovery": perplexity(model, data.test.batches(64)),
        **measure(model, data, args),
    }
    dense["test_after_recovery"] = dense["test_before_recovery"]
    rec = recover(model, data, args, 0)
    extra = {
        "planner": "dense+recovery",
        "level": 0.0,
        "params_saved": 0.0,
        "seed": 0,
        "recovery": rec,
        "test_before_recovery": dense["test_before_recovery"],
        "test_after_recovery": perplexity(model, data.test.batches(64)),
        **measure(model, data, args),
    }
    return [dense, extra]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/tiny_llama")
    p.add_argument("--config", default="configs/tiny_llama.yaml", help="the training config (data section)")
    p.add_argument("--out", default="results/lm")
    p.add_argument("--planners", nargs="+", default=list(PLANNERS))
    p.add_argument("--levels", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--ignore", nargs="*", default=[], help="fnmatch patterns of layers not to prune")
    p.add_argument("--recovery-steps", type=int, default=150)
    p.add_argument("--recovery-lr", type=float, default=1e-3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--latency-repeats", type=int, default=10)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    t0 = time.time()
    data = lm_data(read_config(args.config), tokenizer=AutoTokenizer.from_pretrained(args.model))
    unigram = unigram_perplexity(
        data.train.input_ids, data.train.labels, data.test.labels, len(data.tokenizer)
    )
    rows = dense_rows(data, args)
    print(
        f"dense test perplexity {rows[0]['test_before_recovery']['perplexity']:.2f}, unigram {unigram['perplexity']:.2f}"
    )
    for spec in args.planners:
        for level in args.levels:
            for seed in args.seeds:
                r = prune_row(spec, level, seed, data, args)
                rows.append(r)
                print(
                    f"{spec} {level:.0%} seed {seed}: saved {r['params_saved']:.3f}, ppl "
                    f"{r['test_before_recovery']['perplexity']:.1f} -> {r['test_after_recovery']['perplexity']:.1f}"
                )
    result = {
        "command": "python experiments/lm_prune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "unigram_test": unigram,
        "data": data.info,
        "rows": rows,
        "seconds": time.time() - t0,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_prune.json").write_text(json.dumps(result, indent=2))
    from lm_prune_report import write_report

    write_report(result, out)
    return result


if __name__ == "__main__":
    main()
