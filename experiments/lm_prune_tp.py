"""Torch-Pruning's LLM recipe (its examples/LLMs/prune_llm.py) on the tiny LLaMA, for comparison with
results/lm/lm_prune.md: ``tp.pruner.MetaPruner`` with ``GroupMagnitudeImportance(p=2, mean)`` (or
``GroupTaylorImportance`` on calibration blocks), heads pruned whole (``num_heads`` of q/k/v,
``prune_num_heads``, head dims kept), the lm_head ignored, one pruning ratio for the hidden size and
the heads, ``round_to=4``, then the attribute updates that script makes.

    OMP_NUM_THREADS=1 python experiments/lm_prune_tp.py --model runs/tiny_llama --out results/lm

torch-pruning 1.6.1 did not finish building its dependency graph on grouped-query attention in
earlier sessions (prunekit/structure/heads.py), so every attempt runs in a child process that is
stopped when the graph build has used ``--graph-cpu`` CPU seconds (building prunekit's own groups of
this model takes well under one); the outcome is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _mha_variant(model_dir: str) -> Any:
    """The same architecture with one key-value head per query head (no GQA), random weights (seed 0):
    a probe of whether the graph build itself finishes; its perplexity would mean nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.num_key_value_heads = cfg.num_attention_heads
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _prune(model_dir: str, ratio: float, importance: str, config: str, queue: Any, mha: bool = False) -> None:
    """Child: the example's recipe at ``ratio``; puts events (graph built, params, perplexity) in ``queue``.
    The dependency graph is built first, from one short tokenized text, as the example does."""
    try:
        import torch
        import torch_pruning as tp
        from transformers import AutoTokenizer

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from prunekit.metrics.perplexity import perplexity
        from prunekit.models.causal_lm import load_causal_lm

        torch.set_num_threads(1)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = _mha_variant(model_dir) if mha else load_causal_lm(model_dir)
        dense_params = sum(p.numel() for p in model.parameters())
        inputs = torch.tensor(tokenizer.encode("Hello world, this is a tweet about the weather.")).unsqueeze(
            0
        )
        num_heads = {}
        for name, m in model.named_modules():
            if name.endswith("self_attn"):
                num_heads[m.q_proj] = model.config.num_attention_heads
                num_heads[m.k_proj] = model.config.num_key_value_heads
                num_heads[m.v_proj] = model.config.num_key_value_heads
        if importance == "taylor":
            imp = tp.importance.GroupTaylorImportance()
        else:
            imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
        queue.put({"event": "graph build started"})
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs=inputs,
            importance=imp,
            global_pruning=False,
            output_transform=lambda x: x.logits,
            pruning_ratio=ratio,
            ignored_layers=[model.lm_head],
            num_heads=num_heads,
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=ratio,
            round_to=4,
        )
        queue.put({"event": "graph built", "seconds": time.perf_counter() - t0})
        if importance == "taylor":
            model(input_ids=inputs, labels=inputs).loss.backward()
        for g in pruner.step(interactive=True):
            g.prune()
        params = sum(p.numel() for p in model.parameters())
        queue.put({"event": "pruned", "params_saved": 1 - params / dense_params, "params": params})
        if mha:
            with torch.no_grad():
                model(input_ids=inputs)  # the pruned variant still runs
            queue.put({"event": "done"})
            return
        from train_tiny_llama import lm_data, read_config

        data = lm_data(read_config(config), tokenizer=tokenizer)
        ppl = perplexity(model, data.test.batches(64))["perplexity"]
        queue.put({"event": "done", "test_before_recovery": ppl})
    except Exception as e:  # noqa: BLE001 - reported, not hidden: the comparison row says what failed
        queue.put(
            {"event": "error", "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc): wall time means little under load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def attempt(args: argparse.Namespace, ratio: float, importance: str) -> dict[str, Any]:
    """One child; it is stopped when its graph build has used ``--graph-cpu`` CPU seconds without
    finishing (CPU, not wall, seconds: the machine is shared), or after ``--timeout`` wall seconds."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_prune, args=(args.model, ratio, importance, args.config, q, args.mha))
    t0 = time.time()
    child.start()
    events: list[dict] = []
    cpu_at_start = None
    model = "same size, no GQA, random weights" if args.mha else "tiny LLaMA (GQA)"
    out: dict[str, Any] = {"model": model, "ratio": ratio, "importance": importance, "events": events}
    while child.is_alive() and time.time() - t0 < args.timeout:
        child.join(2)
        while not q.empty():
            events.append(q.get())
        names = {e["event"] for e in events}
        if "graph build started" in names and cpu_at_start is None:
            cpu_at_start = _cpu_seconds(child.pid)
        if cpu_at_start is not None and "graph built" not in names and child.is_alive():
            used = _cpu_seconds(child.pid) - cpu_at_start
            out["graph_cpu_seconds"] = round(used, 1)
            if used > args.graph_cpu:
                break
    while not q.empty():
        events.append(q.get())
    names = {e["event"] for e in events}
    if child.is_alive():
        child.terminate()
        child.join(10)
        out["outcome"] = (
            f"graph build not finished after {out.get('graph_cpu_seconds')} CPU s: stopped"
            if "graph built" not in names
            else f"stopped after {args.timeout} s wall (graph built)"
        )
    else:
        out["outcome"] = "done" if "done" in names else "failed"
    for e in events:
        out.update(
            {k: v for k, v in e.items() if k in ("params_saved", "params", "test_before_recovery", "error")}
        )
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")  # the installed distribution (its __version__ string says 1.6.0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/tiny_llama")
    p.add_argument("--config", default="configs/tiny_llama.yaml")
    p.add_argument("--out", default="results/lm")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3])
    p.add_argument("--importance", nargs="+", default=["magnitude"], choices=["magnitude", "taylor"])
    p.add_argument("--timeout", type=int, default=1800, help="wall seconds per attempt")
    p.add_argument("--mha", action="store_true", help="probe: the same model without GQA (random weights)")
    p.add_argument("--graph-cpu", type=float, default=120.0, help="CPU seconds the graph build may use")
    args = p.parse_args(argv)
    rows = [attempt(args, r, imp) for imp in args.importance for r in args.ratios]
    for r in rows:
        print(r["importance"], r["ratio"], r["outcome"], r.get("params_saved"), r.get("test_before_recovery"))
    command = "python experiments/lm_prune_tp.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for r in rows:
        r["command"] = command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lm_prune_tp.json"
    # each invocation adds its rows (the GQA attempt and the no-GQA probe are separate commands)
    result = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    result.update(torch_pruning=_version(), rows=result["rows"] + rows)
    path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
