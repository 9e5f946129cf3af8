"""results/lm/lm_prune.md and perplexity_vs_params.png from lm_prune.json (rerun alone:
``python experiments/lm_prune_report.py results/lm``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _ppl(row: dict[str, Any], key: str) -> float:
    return row[key]["perplexity"]


def table(result: dict[str, Any]) -> list[str]:
    dense = result["rows"][0]
    lines = [
        "| planner | target saved | params saved | params | MACs/token | ppl before recovery | ppl after recovery "
        "| prefill ms/token | decode ms/token | prefill speed-up | decode speed-up | MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    d_lat = dense["latency"]
    for r in result["rows"]:
        lat = r["latency"]
        lines.append(
            f"| {r['planner']} | {r['level']:.0%} | {r['params_saved']:.3f} | {r['params']:,} | "
            f"{r['macs_per_token'] / 1e6:.2f} M | {_ppl(r, 'test_before_recovery'):.2f} | "
            f"{_ppl(r, 'test_after_recovery'):.2f} | {lat['prefill_ms_per_token']:.3f} | "
            f"{lat['decode_ms_per_token']:.3f} | {d_lat['prefill_ms_per_token'] / lat['prefill_ms_per_token']:.2f}x | "
            f"{d_lat['decode_ms_per_token'] / lat['decode_ms_per_token']:.2f}x | "
            f"{dense['macs_per_token'] / r['macs_per_token']:.2f}x |"
        )
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = result["rows"]
    planners = sorted({r["planner"] for r in rows if r["level"] > 0})
    dense = rows[0]
    for name in planners:
        pts = sorted(
            (r["params_saved"], _ppl(r, "test_after_recovery"), _ppl(r, "test_before_recovery"))
            for r in rows
            if r["planner"] == name
        )
        xs = [0.0] + [p[0] for p in pts]
        line = ax.plot(
            xs,
            [_ppl(rows[1], "test_after_recovery")] + [p[1] for p in pts],
            "o-",
            label=f"{name} (recovered)",
        )
        ax.plot(
            xs,
            [_ppl(dense, "test_before_recovery")] + [p[2] for p in pts],
            "x:",
            color=line[0].get_color(),
            alpha=0.6,
        )
    ax.axhline(result["unigram_test"]["perplexity"], color="gray", ls="--", label="unigram baseline")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of params saved")
    ax.set_ylabel("test perplexity (dotted: before recovery)")
    ax.legend(fontsize=7)
    ax.set_title("tiny LLaMA (GQA) on the tweet corpus")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], out: Path) -> None:
    dense = result["rows"][0]
    lat = dense["latency"]
    text = [
        "# Pruning a tiny LLaMA (grouped-query attention) trained from scratch on the offline tweet corpus",
        "",
        f"Command: `{result['command']}` ({result['seconds'] / 60:.1f} min, torch {result['torch']}, "
        f"{result['torch_threads']} thread(s)).",
        "",
        f"Data: {result['data']['documents']} documents after dedup (of {result['data']['documents_before_dedup']}), "
        f"tokens {result['data']['tokens']}, blocks of {result['data']['block_size']}, split "
        f"`{result['data']['split']}`.",
        "",
        f"Dense test perplexity **{_ppl(dense, 'test_before_recovery'):.2f}**; add-one unigram baseline on the same "
        f"tokens **{result['unigram_test']['perplexity']:.2f}**. Perplexity is exact over all "
        f"{dense['test_before_recovery']['tokens']:,} predicted test tokens.",
        "",
        f"Latency: CPU, {lat['threads']} thread, batch 1, medians of {lat['repeats']} runs; prefill = one forward of a "
        f"{lat['prompt_len']}-token prompt / its length; decode = {lat['new_tokens']} greedy steps with the KV cache. "
        "MACs per token at the block length (attention scores included).",
        "",
        *table(result),
        "",
        "![perplexity vs params saved](perplexity_vs_params.png)",
        "",
    ]
    (out / "lm_prune.md").write_text("\n".join(text))
    plot(result, out / "perplexity_vs_params.png")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/lm")
    write_report(json.loads((folder / "lm_prune.json").read_text()), folder)
