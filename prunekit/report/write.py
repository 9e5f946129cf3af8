"""Render a report dict as ``report.json``, ``report.md``, ``accuracy_vs_params.png`` and
``gap_vs_params.png`` (the predicted against the measured train − test gap, per level)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.atomic import write_json, write_text

PLOT = "accuracy_vs_params.png"
GAP_PLOT = "gap_vs_params.png"


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _num(x: Any, fmt: str = ".4f") -> str:
    return "–" if x is None else format(x, fmt)


def _rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("dense", report["dense"])] + [(lv["checkpoint"], lv) for lv in report["levels"]]


def has_gaps(report: dict[str, Any]) -> bool:
    """Whether any row predicts or measures a generalization gap (then the gap table and plot exist)."""
    keys = ("predicted_gap", "predicted_gap_calibrated", "gap")
    return any(r.get(k) is not None for _, r in _rows(report) for k in keys)


def gap_table(report: dict[str, Any]) -> list[str]:
    """Per level: the predicted gap (stated, calibrated) next to the measured train − test gap."""
    lines = [
        "",
        "Predicted against measured generalization gap. Predicted: the stated bound (uncalibrated: compare "
        "rankings, not values) and, with a calibration, the calibrated gap: for a one-shot level at the "
        "pruned weights before fine-tuning (the planner's own prediction when estimates are off), for a "
        "scheduled level at its final weights (each step's planned prediction is in the schedule table); "
        "measured: train − test accuracy after fine-tuning.",
        "",
        "| checkpoint | params saved | predicted gap (stated) | predicted gap (calibrated) | train accuracy | test accuracy | measured gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in _rows(report):
        saved = r.get("params_saved", 0.0)
        gap = "–" if r.get("gap") is None else f"{r['gap']:+.4f}"
        lines.append(
            f"| {name} | {100 * saved:.1f} % | {_num(r.get('predicted_gap'))} | "
            f"{_num(r.get('predicted_gap_calibrated'))} | {_num(r.get('train_accuracy'))} | "
            f"{r['accuracy']:.4f} | {gap} |"
        )
    return lines


def _scheduled(report: dict[str, Any]) -> bool:
    return any(
        (lv.get("schedule") or "one_shot") != "one_shot" or (lv.get("starts_from") or "dense") != "dense"
        for lv in report["levels"]
    )


def schedule_section(report: dict[str, Any]) -> list[str]:
    """Each level's steps (prune -> fine-tune -> re-estimate), its status and its training budget."""
    s = report.get("schedule") or {}
    lines = [
        "",
        f"## Schedule: {s.get('name', '?')} (at most {s.get('steps', '?')} steps, tolerance "
        f"{_num(s.get('tolerance'), '.0%')}, chain_levels {s.get('chain_levels', False)})",
        "",
        "Every level fine-tunes for one one-shot budget in total, shared out over its steps.",
        "",
        "| checkpoint | starts from | status | reference gap | total train steps | note |",
        "|---|---|---|---|---|---|",
    ]
    for lv in report["levels"]:
        lines.append(
            f"| {lv['checkpoint']} | {lv.get('starts_from') or 'dense'} | {lv.get('schedule_status') or '–'} | "
            f"{_num(lv.get('schedule_reference_gap'))} | {_num(lv.get('total_train_steps'), 'd')} | "
            f"{lv.get('schedule_note') or ''} |"
        )
    lines += [
        "",
        "| checkpoint | step | target saved | saved | params | MACs | predicted gap planned (stated / calibrated) | predicted gap after FT (stated / calibrated) | train steps | val. accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in report["levels"]:
        for st in lv.get("steps") or []:
            planned = f"{_num(st.get('predicted_gap_planned'))} / {_num(st.get('predicted_gap_planned_calibrated'))}"
            after = f"{_num(st.get('predicted_gap_after_finetune'))} / {_num(st.get('predicted_gap_after_finetune_calibrated'))}"
            lines.append(
                f"| {lv['checkpoint']} | {st['step']} | {100 * st['target_saved']:.1f} % | "
                f"{100 * st['saved']:.1f} % | {_fmt_count(st['params']) if st.get('params') is not None else '–'} | "
                f"{_fmt_count(st['macs']) if st.get('macs') is not None else '–'} | {planned} | {after} | "
                f"{_num(st.get('train_steps'), 'd')} | {_num(st.get('val_accuracy'))} |"
            )
    return lines


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
    rows = _rows(report)
    if has_gaps(report):
        lines += gap_table(report)
    if _scheduled(report):
        lines += schedule_section(report)
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
                f"{e.get('d_eff', float('nan')):.2f} | {bound} | {_num(r.get('train_accuracy'))} | "
                f"{_num(r.get('gap'), '+.4f')} |"
            )
    lines += ["", f"![accuracy against params saved]({PLOT})"]
    if has_gaps(report):
        lines.append(f"![predicted and measured gap against params saved]({GAP_PLOT})")
    lines += [
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


def plot_gaps(report: dict[str, Any], path: Path) -> None:
    """The predicted gap (stated on its own axis: it is uncalibrated; calibrated beside the measured
    one) and the measured train − test gap, against params saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for _, r in _rows(report)]
    xs = [100 * r.get("params_saved", 0.0) for r in rows]

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(x, r[key]) for x, r in zip(xs, rows, strict=True) if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(5.5, 4.4))
    handles = []
    for key, style, label in (
        ("gap", "o-", "measured gap (train − test)"),
        ("predicted_gap_calibrated", "s--", "predicted gap (calibrated)"),
    ):
        x, y = series(key)
        if x:
            handles += ax.plot(x, y, style, label=label)
    ax.set_xlabel("params saved (%)")
    ax.set_ylabel("accuracy gap")
    ax.grid(alpha=0.3)
    x, y = series("predicted_gap")
    if x:
        right = ax.twinx()
        handles += right.plot(x, y, "x:", color="tab:red", label="predicted gap (stated bound, right axis)")
        right.set_ylabel("stated bound (uncalibrated)")
    # one legend under the axes: nothing drawn over the points
    fig.legend(handles=handles, loc="lower center", ncol=1, fontsize="small", frameon=False)
    fig.subplots_adjust(bottom=0.3, left=0.14, right=0.84)
    ax.set_title(f"{report['task']} / {report['model']}: generalization gap")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(folder: str | Path, report: dict[str, Any]) -> None:
    folder = Path(folder)
    plot(report, folder / PLOT)
    if has_gaps(report):
        plot_gaps(report, folder / GAP_PLOT)
    write_text(folder / "report.md", to_markdown(report))
    write_json(folder / "report.json", report)
