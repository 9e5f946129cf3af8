"""The causal-LM run's report: report.json, report.md (perplexity, params, MACs/token, CPU latency/token)
and perplexity_vs_params.png (one line per planner; dotted: before recovery).

The run's identity (task, model, planner, seed, version, config fingerprint) comes from the classifier
report's :func:`~prunekit.report.build.build_report`, so both reports carry the same header; the rows
are the LM's own (perplexity in place of accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.atomic import write_json, write_text
from prunekit.config import RunConfig
from prunekit.report.build import build_report

PLOT = "perplexity_vs_params.png"
VOLATILE = ["prefill_ms_per_token", "decode_ms_per_token", "seconds"]  # wall times on a shared machine


def build_lm_report(
    cfg: RunConfig, dense: dict[str, Any], levels: list[dict[str, Any]], **extra: Any
) -> dict:
    """The report dict: the shared header, the dense row, the level rows and ``extra`` (data, baselines)."""
    header = build_report(cfg, {}, [])
    for key in ("dense", "levels", "volatile_fields", "schedule"):  # classifier rows and options
        header.pop(key)
    planner = cfg.prune.planner + (f" ({cfg.prune.importance})" if cfg.prune.importance else "")
    return header | {
        "task": "causal_lm",
        "planner": planner,
        "recovery": cfg.recovery.model_dump(mode="json"),
        **extra,
        "dense": dense,
        "levels": levels,
        "volatile_fields": VOLATILE,
    }


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
    tmp = path.with_name(f".{path.name}.tmp.png")  # a reader never sees half a file
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_lm_report(folder: str | Path, report: dict[str, Any]) -> None:
    folder = Path(folder)
    plot(report, folder / PLOT)
    write_text(folder / "report.md", to_markdown(report))
    write_json(folder / "report.json", report)
