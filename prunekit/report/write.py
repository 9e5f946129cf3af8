"""Render a report dict as ``report.json``, ``report.md`` and ``accuracy_vs_params.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.atomic import write_json, write_text

PLOT = "accuracy_vs_params.png"


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def to_markdown(report: dict[str, Any]) -> str:
    d = report["dense"]
    lines = [
        f"# prunekit report: {report['name']}",
        "",
        f"task **{report['task']}**, model **{report['model']}**, planner **{report['planner']}** "
        f"(importance {report['importance']}, target metric {report['metric']}), seed {report['seed']}",
        "",
        "| checkpoint | target saved | params | params saved | MACs | MACs saved | acc. before FT | accuracy | latency (ms) | speed-up | speed-up ÷ MAC reduction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| dense | – | {_fmt_count(d['params'])} | 0.0 % | {_fmt_count(d['macs'])} | 0.0 % | – | {d['accuracy']:.4f} | {d['latency_ms']:.3f} | 1.00× | – |",
    ]
    for lv in report["levels"]:
        speed = f"{lv['speedup']:.2f}×" if lv.get("speedup") else "–"
        ratio = f"{lv['speedup_per_mac_reduction']:.2f}" if lv.get("speedup_per_mac_reduction") else "–"
        lines.append(
            f"| {lv['checkpoint']} | {100 * lv['target']:.0f} % | {_fmt_count(lv['params'])} | "
            f"{100 * lv['params_saved']:.1f} % | {_fmt_count(lv['macs'])} | {100 * lv['macs_saved']:.1f} % | "
            f"{lv['accuracy_before_finetune']:.4f} | {lv['accuracy']:.4f} | {lv['latency_ms']:.3f} | {speed} | {ratio} |"
        )
    rows = [("dense", d)] + [(lv["checkpoint"], lv) for lv in report["levels"]]
    if any(r.get("estimate") for _, r in rows):
        lines += [
            "",
            "Generalization: the stated bound sqrt(C_arch·T_opt/(n·d_eff)), estimated at the pruned weights "
            "before fine-tuning, against the measured train − test accuracy gap after it (uncalibrated: "
            "compare rankings, not values).",
            "",
            "| checkpoint | C_arch | T_opt | d_eff | predicted gap | train accuracy | measured gap |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in rows:
            e = r.get("estimate") or {}
            bound = f"{e['bound']:.4f}" if e.get("bound") is not None else "–"
            lines.append(
                f"| {name} | {e.get('C_arch', float('nan')):.1f} | {e.get('T_opt', float('nan')):.4g} | "
                f"{e.get('d_eff', float('nan')):.2f} | {bound} | {r['train_accuracy']:.4f} | {r['gap']:+.4f} |"
            )
    lines += [
        "",
        f"![accuracy against params saved]({PLOT})",
        "",
        "Accuracy is on the test split, measured once after fine-tuning. Latency is the median CPU "
        "wall time of repeated forward passes and varies between runs on a shared machine.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0.0] + [100 * lv["params_saved"] for lv in report["levels"]]
    ys = [report["dense"]["accuracy"]] + [lv["accuracy"] for lv in report["levels"]]
    before = [lv["accuracy_before_finetune"] for lv in report["levels"]]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(xs, ys, "o-", label=f"{report['planner']} + fine-tune")
    ax.plot(xs[1:], before, "x--", alpha=0.6, label="before fine-tune")
    ax.set_xlabel("params saved (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{report['task']} / {report['model']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(folder: str | Path, report: dict[str, Any]) -> None:
    folder = Path(folder)
    plot(report, folder / PLOT)
    write_text(folder / "report.md", to_markdown(report))
    write_json(folder / "report.json", report)
