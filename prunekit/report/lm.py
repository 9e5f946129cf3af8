"""The causal-LM run's report: report.json, report.md (perplexity, params, MACs/token, CPU latency/token)
and perplexity_vs_params.png (one line per planner; dotted: before recovery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.atomic import write_json, write_text

PLOT = "perplexity_vs_params.png"


def to_markdown(report: dict[str, Any]) -> str:
    d = report["dense"]
    lines = [
        f"# {report['name']}: causal LM pruned with `{report['planner']}`",
        "",
        f"Dense test perplexity **{d['perplexity']:.2f}** ({d['params']:,} params); add-one unigram baseline "
        f"**{report['unigram_perplexity']:.2f}** on the same {d['tokens']:,} predicted test tokens.",
        "",
        "| level | params saved | params | MACs/token | ppl before recovery | ppl after recovery "
        "| prefill ms/token | decode ms/token |",
        "|---|---|---|---|---|---|---|---|",
        f"| dense | 0.000 | {d['params']:,} | {d['macs_per_token'] / 1e6:.2f} M | {d['perplexity']:.2f} | "
        f"{d['perplexity']:.2f} | {d['prefill_ms_per_token']:.3f} | {d['decode_ms_per_token']:.3f} |",
    ]
    for lv in report["levels"]:
        lines.append(
            f"| {lv['checkpoint']} | {lv['params_saved']:.3f} | {lv['params']:,} | {lv['macs_per_token'] / 1e6:.2f} M | "
            f"{lv['perplexity_before_recovery']:.2f} | {lv['perplexity']:.2f} | {lv['prefill_ms_per_token']:.3f} | "
            f"{lv['decode_ms_per_token']:.3f} |"
        )
    lines += [
        "",
        f"![perplexity against params saved]({PLOT})",
        "",
        f"Perplexity is exact over the test split. Latency: CPU, {report['latency_threads']} thread(s), batch 1, "
        "medians; prefill = one forward of a block-length prompt / its length; decode = greedy steps with the "
        "KV cache. It varies between runs on a shared machine.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0.0] + [lv["params_saved"] for lv in report["levels"]]
    dense = report["dense"]["perplexity"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    line = ax.plot(
        xs,
        [dense] + [lv["perplexity"] for lv in report["levels"]],
        "o-",
        label=f"{report['planner']} + recovery",
    )
    before = [dense] + [lv["perplexity_before_recovery"] for lv in report["levels"]]
    ax.plot(xs, before, "x:", color=line[0].get_color(), alpha=0.6, label="before recovery")
    ax.axhline(report["unigram_perplexity"], color="gray", ls="--", label="unigram baseline")
    ax.set_xlabel("fraction of params saved")
    ax.set_ylabel("test perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_lm_report(folder: str | Path, report: dict[str, Any]) -> None:
    folder = Path(folder)
    plot(report, folder / PLOT)
    write_text(folder / "report.md", to_markdown(report))
    write_json(folder / "report.json", report)
