"""results/lm/lm_prune.md and perplexity_vs_params.png from lm_prune.json (and lm_prune_tp.json when
present); rerun alone: ``python experiments/lm_prune_report.py results/lm``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METHODS = {"full": "full fine-tuning", "lora": "LoRA (merged)"}


def _ppl(row: dict[str, Any], key: str = "test_before_recovery") -> float:
    return row[key]["perplexity"]


def _scored(row: dict[str, Any]) -> float:
    """Before recovery, on the blocks the recovered models are scored on."""
    return _ppl(row, "scored_before_recovery" if "scored_before_recovery" in row else "test_before_recovery")


def _ms(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f} (1 seed)"


def _split(d: dict[str, int]) -> str:
    return " / ".join(f"{d[k]:,}" for k in ("train", "validation", "test"))


def perplexity_table(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    dense = rows[0]
    seeds = result["args"]["seeds"]
    lines = [
        f"| planner | target saved | params saved | params | MACs/token | ppl before recovery, all test | "
        f"before, scored blocks | after full recovery (mean ± std, {len(seeds)} seeds) | after LoRA recovery "
        "(mean ± std) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['planner']} | {r['level']:.0%} | {r['params_saved']:.3f} | {r['params']:,} | "
            f"{r['macs_per_token'] / 1e6:.2f} M ({dense['macs_per_token'] / r['macs_per_token']:.2f}x fewer) | "
            f"{_ppl(r):.2f} | {_scored(r):.2f} | {_ms(r.get('full_summary'))} | {_ms(r.get('lora_summary'))} |"
        )
    return lines


def latency_table(result: dict[str, Any]) -> list[str]:
    lat = result["latency"]
    by_name = {"dense": result["rows"][0]} | {f"{r['planner']}@{r['level']}": r for r in result["rows"][1:]}
    dense_macs = result["rows"][0]["macs_per_token"]
    lines = [
        "| structure | MAC reduction | prefill ms/token, median [IQR] | prefill speed-up, median [IQR] "
        "| decode ms/token, median [IQR] | decode speed-up, median [IQR] |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in lat["models"].items():
        row = by_name[name]
        cells = []
        for kind in ("prefill", "decode"):
            lo, hi = m[f"{kind}_ms_iqr"]
            slo, shi = m[f"{kind}_speedup_iqr"]
            cells += [
                f"{m[f'{kind}_ms_per_token']:.3f} [{lo:.3f}, {hi:.3f}]",
                f"{m[f'{kind}_speedup']:.2f}x [{slo:.2f}, {shi:.2f}]",
            ]
        lines.append(f"| {name} | {dense_macs / row['macs_per_token']:.2f}x | " + " | ".join(cells) + " |")
    return lines


def tp_section(folder: Path) -> list[str]:
    path = folder / "lm_prune_tp.json"
    if not path.is_file():
        return []
    tp = json.loads(path.read_text())
    lines = [
        "",
        f"## Torch-Pruning {tp['torch_pruning']}'s LLM recipe (experiments/lm_prune_tp.py)",
        "",
        "Its examples/LLMs/prune_llm.py: `MetaPruner`, `GroupMagnitudeImportance(p=2, mean)`, heads pruned "
        "whole (`num_heads` of q/k/v, `prune_num_heads`, head dims kept), hidden size pruned at the same "
        "ratio, lm_head ignored, `round_to=4`. Each attempt runs in a child process stopped when its "
        "dependency-graph build has used the stated CPU seconds (prunekit groups this model in well under one).",
        "",
        "| model | importance | pruning ratio | outcome | graph build s | params saved | ppl before recovery | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in tp["rows"]:
        saved = f"{r['params_saved']:.3f}" if "params_saved" in r else "-"
        ppl = f"{r['test_before_recovery']:.2f}" if "test_before_recovery" in r else "-"
        lines.append(
            f"| {r.get('model', '-')} | {r['importance']} | {r['ratio']} | {r['outcome']} | "
            f"{r.get('graph_seconds', '-')} | {saved} | {ppl} | `{r['command']}` |"
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = result["rows"]
    dense = rows[0]
    for name in dict.fromkeys(r["planner"] for r in rows[1:]):
        pts = sorted((r for r in rows[1:] if r["planner"] == name), key=lambda r: r["params_saved"])
        xs = [0.0] + [r["params_saved"] for r in pts]
        full = ax.errorbar(
            xs,
            [dense["full_summary"]["mean"]] + [r["full_summary"]["mean"] for r in pts],
            yerr=[0.0] + [r["full_summary"]["std"] for r in pts],
            fmt="o-",
            capsize=3,
            label=f"{name}: full recovery",
        )
        color = full[0].get_color()
        ax.errorbar(
            xs,
            [dense["lora_summary"]["mean"]] + [r["lora_summary"]["mean"] for r in pts],
            yerr=[0.0] + [r["lora_summary"]["std"] for r in pts],
            fmt="s--",
            capsize=3,
            color=color,
            alpha=0.8,
            label=f"{name}: LoRA",
        )
        ax.plot(xs, [_scored(dense)] + [_scored(r) for r in pts], "x:", color=color, alpha=0.5)
    ax.axhline(_scored(dense), color="black", lw=0.8, label="dense")
    ax.set_xlabel("fraction of params saved")
    ax.set_ylabel("test perplexity, scored blocks (log)")
    ax.set_yscale("log")
    ax.set_title("tiny LLaMA (GQA): dotted = before recovery; bars = std over recovery seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], folder: Path) -> None:
    a = result["args"]
    dense = result["rows"][0]
    lat = result.get("latency")
    text = [
        "# Pruning a tiny LLaMA (grouped-query attention) trained from scratch on the offline tweet corpus",
        "",
        f"Command: `{result['command']}`"
        + "".join(
            f"; shard: `{s['command']}` ({s['seconds'] / 60:.1f} min)" for s in result.get("shards", [])
        ),
        f" (torch {result['torch']}, {result['torch_threads']} thread(s)).",
        "",
        f"Data: {_split(result['data']['documents'])} documents, {_split(result['data']['tokens'])} tokens "
        f"(train / validation / test), blocks of {result['data']['block_size']}. Dense test perplexity **{_ppl(dense):.2f}**; add-one unigram "
        f"**{result['unigram_test']['perplexity']:.2f}**; exact over all "
        f"{dense['test_before_recovery']['tokens']:,} predicted test tokens.",
        "",
        f"Recovery: {a['recovery_steps']} steps x 16 blocks, AdamW, warmup {a['recovery_steps'] // 5} steps then "
        f"cosine; full fine-tuning lr {a['recovery_lr']}, LoRA (peft, r {a['lora_r']}, alpha {a['lora_alpha']}, "
        f"all linear layers but the head, merged into the pruned weights) lr {a['lora_lr']}; recovery seeds "
        f"{a['seeds']} (the dense rows: seed {a['seeds'][0]} only). Each prune is planned once (planner seed 0). "
        f"Recovered models are scored exactly on the first {a['eval_blocks'] or 'all'} test blocks "
        f"({dense['scored_before_recovery']['tokens']:,} predicted tokens); the column before it gives each "
        "model before recovery on the same blocks.",
        "",
        *perplexity_table(result),
        "",
        "![perplexity vs params saved](perplexity_vs_params.png)",
    ]
    if lat:
        text += [
            "",
            f"## Latency (CPU, 1 thread, batch 1, {lat['rounds']} interleaved rounds)",
            "",
            f"Each round measures the dense model then every pruned structure once: prefill = one forward of "
            f"a {lat['prompt_len']}-token prompt / its length; decode = {lat['new_tokens']} greedy steps with "
            "the KV cache / their number. Speed-up = median over rounds of dense time / structure time in the "
            "same round; IQR = 25-75 % of the per-round values.",
            "",
            *latency_table(result),
        ]
    text += tp_section(folder)
    (folder / "lm_prune.md").write_text("\n".join(text) + "\n")
    plot(result, folder / "perplexity_vs_params.png")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/lm")
    write_report(json.loads((folder / "lm_prune.json").read_text()), folder)
