"""Prune the tiny LLaMA (GQA heads, key-value heads, FFN neurons) to several params-saved levels with
several planners, recover each prune with full fine-tuning and with LoRA (peft, merged back) over
several recovery seeds, and measure perplexity, params, MACs/token and CPU latency/token.

    OMP_NUM_THREADS=1 python experiments/lm_prune.py --model runs/tiny_llama --out results/lm

Needs a model trained by experiments/train_tiny_llama.py (its folder holds the tokenizer; the data split
is rebuilt deterministically from the same config). Every row starts from the same dense weights and is
planned once (planner seed 0); the recovery seeds change the shuffling order (and LoRA's initial A).
The dense model gets the same recovery budget (``dense+full``, ``dense+lora``), so the comparison is at
equal training. Perplexity before recovery is exact over the whole test split; the recovered models
(and, for comparison, each model before recovery) are scored exactly on the first ``--eval-blocks``
test blocks (512 x 64 tokens by default: a fixed quarter of the split, to fit a shared machine).

Latency is measured after all training, in rounds: each round measures the dense model and then every
pruned structure once (one prefill of a block-length prompt, then greedy decode steps with the KV
cache), so a change of machine load hits dense and pruned alike; the speed-up of a structure is the
median over rounds of (dense time / its time) in the same round, with the 25-75 % range of those ratios.
Recovery does not change a structure, so latency is measured on the un-recovered prunes.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
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
from prunekit.train.lora import LoRASpec, train_lm_lora  # noqa: E402

PLANNERS = ("uniform:l2", "uniform:lm_taylor", "uniform:wanda", "global_magnitude")
METHODS = ("full", "lora")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def planner_of(spec: str, seed: int) -> Any:
    name, _, importance = spec.partition(":")
    options: dict[str, Any] = {"seed": seed, "num_batches": 8}
    if importance:
        options["importance"] = importance
    return planner_config(name, **options)


def recover(model: torch.nn.Module, data: Any, args: argparse.Namespace, method: str, seed: int) -> dict:
    lr = args.recovery_lr if method == "full" else args.lora_lr
    cfg = LMTrainConfig(
        steps=args.recovery_steps, batch_size=16, lr=lr, warmup_steps=args.recovery_steps // 5
    )
    if method == "full":
        hist = train_lm(model, data.train, cfg, seed=seed, log=lambda s: None)
    else:
        spec = LoRASpec(r=args.lora_r, alpha=args.lora_alpha)
        hist = train_lm_lora(model, data.train, cfg, spec, seed=seed, log=lambda s: None)
    out = {"seed": seed, "steps": hist["steps"], "seconds": round(hist["seconds"], 1), "lr": lr}
    if method == "lora":
        out["trainable_params"] = hist["lora_trainable_params"]
    out["test"] = perplexity(model, scored(data, args).batches(64))
    return out


def scored(data: Any, args: argparse.Namespace) -> Any:
    """The test blocks the recovered models are scored on: all, or the first ``--eval-blocks``."""
    n = len(data.test) if not args.eval_blocks else min(args.eval_blocks, len(data.test))
    return data.test.subset(np.arange(n))


def recoveries(
    pruned: torch.nn.Module, data: Any, args: argparse.Namespace, tag: str, seeds: list[int]
) -> dict[str, list]:
    runs: dict[str, list] = {}
    for method in METHODS:
        runs[method] = []
        for seed in seeds:
            r = recover(copy.deepcopy(pruned), data, args, method, seed)
            runs[method].append(r)
            log(f"{tag} {method} seed {seed}: ppl {r['test']['perplexity']:.2f} ({r['seconds']:.0f} s)")
    return runs


def summary(runs: list[dict]) -> dict[str, float]:
    ppl = [r["test"]["perplexity"] for r in runs]
    return {
        "mean": statistics.fmean(ppl),
        "std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
        "n": len(ppl),
    }


def prune(
    spec: str, level: float, data: Any, args: argparse.Namespace, score: bool = True
) -> tuple[torch.nn.Module, dict]:
    model = load_causal_lm(args.model)
    example = data.example_inputs(1)
    groups = find_groups(model, example, ignore=args.ignore)
    calib = list(data.calibration.batches(16))
    t0 = time.perf_counter()
    plan = make_plan(model, groups, Target("params", level), planner_of(spec, 0), calib, example)
    plan_s = time.perf_counter() - t0
    apply_plan_(model, plan, example, groups)
    row = {
        "planner": spec,
        "level": level,
        "plan_seconds": plan_s,
        "params_saved": plan.extra["achieved"]["params_saved"],
        "kept_units": {g: len(k) for g, k in plan.keep.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "macs_per_token": macs_per_token(model, data.block_size),
    }
    if score:
        row["test_before_recovery"] = perplexity(model, data.test.batches(64))
        row["scored_before_recovery"] = perplexity(model, scored(data, args).batches(64))
    return model, row


def _iqr(xs: list[float]) -> list[float]:
    return [float(np.percentile(xs, 25)), float(np.percentile(xs, 75))]


def interleaved_latency(models: dict[str, torch.nn.Module], data: Any, args: argparse.Namespace) -> dict:
    """``args.latency_rounds`` rounds, each measuring every model once in the same order (dense first)."""
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in models}
    for m in models.values():  # warm-up: first-call allocations and kernel selection, discarded
        latency_per_token(m, data.block_size, args.new_tokens, repeats=1, warmup=1)
    for r in range(args.latency_rounds):
        for name, m in models.items():
            lat = latency_per_token(m, data.block_size, args.new_tokens, repeats=1, warmup=0, seed=r)
            times[name]["prefill"].append(lat["prefill_ms_per_token"])
            times[name]["decode"].append(lat["decode_ms_per_token"])
        if r % 10 == 9:
            log(f"latency round {r + 1}/{args.latency_rounds}")
    dense = times["dense"]
    out = {}
    for name, t in times.items():
        entry: dict[str, Any] = {}
        for kind in ("prefill", "decode"):
            ratios = [d / x for d, x in zip(dense[kind], t[kind], strict=True)]
            entry[f"{kind}_ms_per_token"] = statistics.median(t[kind])
            entry[f"{kind}_ms_iqr"] = _iqr(t[kind])
            entry[f"{kind}_speedup"] = statistics.median(ratios)
            entry[f"{kind}_speedup_iqr"] = _iqr(ratios)
        out[name] = entry
    return {
        "rounds": args.latency_rounds,
        "prompt_len": data.block_size,
        "new_tokens": args.new_tokens,
        "threads": 1,
        "models": out,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/tiny_llama")
    p.add_argument("--config", default="configs/tiny_llama.yaml", help="the training config (data section)")
    p.add_argument("--out", default="results/lm")
    p.add_argument("--planners", nargs="+", default=list(PLANNERS))
    p.add_argument("--levels", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="recovery seeds")
    p.add_argument("--ignore", nargs="*", default=[], help="fnmatch patterns of layers not to prune")
    p.add_argument("--recovery-steps", type=int, default=30)
    p.add_argument(
        "--eval-blocks", type=int, default=512, help="recovered models: test blocks scored (0: all)"
    )
    p.add_argument("--recovery-lr", type=float, default=1e-3, help="full fine-tuning")
    p.add_argument("--lora-lr", type=float, default=3e-3)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--latency-rounds", type=int, default=30)
    p.add_argument("--no-dense", action="store_true", help="skip the dense rows (another shard has them)")
    p.add_argument("--skip-latency", action="store_true", help="train-and-score shard: no latency phase")
    p.add_argument(
        "--latency-only",
        nargs="+",
        metavar="SHARD_JSON",
        help="merge these shards' rows, rebuild their prunes and measure the interleaved latency",
    )
    args = p.parse_args(argv)
    if args.latency_only:
        return latency_phase(args)
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    t0 = time.time()
    data = lm_data(read_config(args.config), tokenizer=AutoTokenizer.from_pretrained(args.model))
    unigram = unigram_perplexity(
        data.train.input_ids, data.train.labels, data.test.labels, len(data.tokenizer)
    )
    dense = load_causal_lm(args.model)
    check_vocab(dense, data.tokenizer)
    dense_row = {
        "planner": "dense",
        "level": 0.0,
        "params_saved": 0.0,
        "params": sum(p.numel() for p in dense.parameters()),
        "macs_per_token": macs_per_token(dense, data.block_size),
        "test_before_recovery": perplexity(dense, data.test.batches(64)),
        "scored_before_recovery": perplexity(dense, scored(data, args).batches(64)),
    }
    log(
        f"dense test perplexity {dense_row['test_before_recovery']['perplexity']:.2f}, unigram {unigram['perplexity']:.2f}"
    )
    result: dict[str, Any] = {
        "command": "python experiments/lm_prune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args),
        "unigram_test": unigram,
        "data": data.info,
        "rows": [dense_row],
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:  # partial results survive an interrupted run
        result["seconds"] = time.time() - t0
        (out / "lm_prune.json").write_text(json.dumps(result, indent=2))

    if args.no_dense:
        result["rows"] = []
    else:  # the dense reference is recovered with the first seed only (its spread is the prunes')
        dense_row["recovery"] = recoveries(dense, data, args, "dense", args.seeds[:1])
        for method in METHODS:
            dense_row[f"{method}_summary"] = summary(dense_row["recovery"][method])
    checkpoint()
    structures = {"dense": dense}
    for spec in args.planners:
        for level in args.levels:
            model, row = prune(spec, level, data, args)
            tag = f"{spec} {level:.0%}"
            log(
                f"{tag}: saved {row['params_saved']:.3f}, ppl before recovery {row['test_before_recovery']['perplexity']:.1f}"
            )
            row["recovery"] = recoveries(model, data, args, tag, args.seeds)
            for method in METHODS:
                row[f"{method}_summary"] = summary(row["recovery"][method])
            result["rows"].append(row)
            structures[f"{spec}@{level}"] = model
            checkpoint()
    if args.skip_latency:
        return result
    result["latency"] = interleaved_latency(structures, data, args)
    checkpoint()
    from lm_prune_report import write_report

    write_report(result, out)
    return result


def latency_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the shards (dense row first), rebuild every prune (planning is deterministic), measure."""
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    t0 = time.time()
    shards = [json.loads(Path(f).read_text()) for f in args.latency_only]
    result = {k: v for k, v in shards[0].items() if k not in ("rows", "seconds")}
    rows = [r for s in shards for r in s["rows"]]
    rows.sort(key=lambda r: r["planner"] != "dense")
    result.update(
        rows=rows,
        shards=[{"command": s["command"], "seconds": s["seconds"]} for s in shards],
        command="python experiments/lm_prune.py " + " ".join(sys.argv[1:]),
    )
    data = lm_data(read_config(args.config), tokenizer=AutoTokenizer.from_pretrained(args.model))
    structures = {"dense": load_causal_lm(args.model)}
    for r in rows:
        if r["planner"] != "dense":
            model, again = prune(r["planner"], r["level"], data, args, score=False)
            assert again["kept_units"] == r["kept_units"], "the rebuilt prune differs from the shard's"
            structures[f"{r['planner']}@{r['level']}"] = model
    log(f"{len(structures)} structures rebuilt; measuring latency")
    result["latency"] = interleaved_latency(structures, data, args)
    result["latency_seconds"] = time.time() - t0
    out = Path(args.out)
    (out / "lm_prune.json").write_text(json.dumps(result, indent=2))
    from lm_prune_report import write_report

    write_report(result, out)
    return result


if __name__ == "__main__":
    main()
