"""The study's outputs: report.json, report.md (one τ table per budget), plots, and best_predictor.json.

``best_predictor.json`` is what a ``theory`` planner can be pointed at (format documented in
:func:`best_predictor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.atomic import write_json, write_text
from prunekit.studies.analysis import measured
from prunekit.studies.predictors import DIRECTIONS, THEORY

BEST_FORMAT_VERSION = 1


def _f(x: Any, fmt: str = "+.2f") -> str:
    return "–" if x is None else format(x, fmt)


def _ci(ci: Any) -> str:
    return "–" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _table(group: dict[str, Any]) -> list[str]:
    nc = group["noise_ceiling"]
    pr = group.get("params_range")
    size = f"params {pr[0]}–{pr[1]}; " if pr else ""
    lines = [
        f"{group['n_candidates']} candidates; {size}test accuracy {group['accuracy_range'][0]:.4f}–"
        f"{group['accuracy_range'][1]:.4f}; noise ceiling (τ seed 0 vs seed 1) {_f(nc['tau'])} {_ci(nc['tau_ci95'])}",
        "",
        "| predictor | dir | aligned τ (acc) | τ 95 % CI | ρ | p | top-1 regret | aligned τ (gap) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(
        group["predictors"].items(),
        key=lambda kv: (
            -(kv[1]["accuracy"]["aligned_tau"] if kv[1]["accuracy"]["aligned_tau"] is not None else -9)
        ),
    )
    for name, p in rows:
        a, g = p["accuracy"], p["gap"]
        d = p["direction"]
        ci = None if a["tau_ci95"] is None else sorted(d * x for x in a["tau_ci95"])
        tag = f"**{name}**" if name in THEORY else name
        lines.append(
            f"| {tag} | {'+' if d > 0 else '−'} | {_f(a['aligned_tau'])} | {_ci(ci)} | {_f(a['rho'])} | "
            f"{_f(a['p_value'], '.3f')} | {_f(a['regret'], '.4f')} | {_f(g['aligned_tau'])} |"
        )
    return lines


def markdown(report: dict[str, Any], command: str | None) -> str:
    t, ver = report["task"], report["verdict"]
    out = [
        f"# Validity study: {t['data']} ({t['variant']}) / {t['model']}",
        "",
        f"Made by: `{command}`" if command else "",
        "",
        f"n = {report['data']['n']} training samples, d_eff = {report['data']['d_eff']:.2f}; fine-tuning recipe "
        f"{report['recipe']['finetune']['epochs']} epochs, seeds {report['seeds']}. Dense test accuracy "
        f"{report['dense'].get('test_accuracy', float('nan')):.4f}.",
        "",
        "Aligned τ = (the predictor's a-priori direction) × Kendall τ-b with the mean test accuracy over seeds: "
        "positive means the predictor orders candidates the way it claims to. Theory predictors in **bold**.",
        "",
        f"**Goal** ({ver['goal']}): {'met' if ver['goal_met'] else 'NOT met'}. Best predictor within budgets: "
        f"`{ver['best_predictor']}` (mean aligned τ {_f(report['summary']['mean_aligned_tau'].get(ver['best_predictor']))}); "
        f"the stated bound: {_f(report['summary']['mean_aligned_tau'].get('bound'))}.",
        "",
    ]
    planned = report.get("candidates_planned", {})
    done = ", ".join(
        f"{float(b) * 100:g} %: {g['n_candidates']} of {planned.get(b, '?')}"
        for b, g in report["budgets"].items()
    )
    out += [
        f"Candidates measured per budget: {done}"
        + (
            ""
            if report.get("complete", True)
            else " (the study was stopped before the end: the unmeasured candidates are left out)"
        ),
        "",
    ]
    for b, g in report["budgets"].items():
        out += [f"## Budget: {float(b) * 100:g} % params saved", ""] + _table(g) + [""]
    out += ["## Pooled over budgets (the easy case: size alone separates budgets)", ""]
    out += _table(report["pooled_easy_case"]) + [""]
    cal = report["calibration"].get("C_T", {})
    if "exponents" in cal:
        ex = ", ".join(
            f"{k} {e['value']:+.3g} [{e['ci95'][0]:+.3g}, {e['ci95'][1]:+.3g}]"
            if e.get("ci95")
            else f"{k} {e['value']:+.3g}"
            for k, e in cal["exponents"].items()
        )
        out += [
            "## Calibration on this task",
            "",
            f"log gap = a·log C + b·log T + e: {ex}; R² = {_f(cal.get('r2'), '.3f')} "
            f"({report['calibration']['records']} candidates with a positive gap).",
            "",
        ]
    return "\n".join(out) + "\n"


def best_predictor(report: dict[str, Any], source: str) -> dict[str, Any]:
    """The file a ``theory`` planner points at. Keys:

    - ``predictor``: the name of the predictor with the highest mean within-budget aligned τ (not random),
      one of :data:`prunekit.studies.predictors.DIRECTIONS`;
    - ``direction``: +1 when larger is better, −1 when smaller is better;
    - ``mean_aligned_tau`` and ``per_budget_aligned_tau`` of that predictor; ``bound_mean_aligned_tau``;
    - ``calibration``: a :class:`prunekit.theory.Calibration` dict (``Calibration.from_dict``) of log gap on
      log C and log T fitted on this task, or None;
    - ``task``, ``source`` (the report it came from), ``format_version``.
    """
    best = report["verdict"]["best_predictor"]
    cal = report["calibration"].get("C_T")
    return {
        "format_version": BEST_FORMAT_VERSION,
        "predictor": best,
        "direction": DIRECTIONS.get(best),
        "mean_aligned_tau": report["summary"]["mean_aligned_tau"].get(best),
        "per_budget_aligned_tau": {
            b: g["predictors"][best]["accuracy"]["aligned_tau"] for b, g in report["budgets"].items()
        }
        if best
        else {},
        "bound_mean_aligned_tau": report["summary"]["mean_aligned_tau"].get("bound"),
        "goal_met": report["verdict"]["goal_met"],
        "calibration": cal if cal and "exponents" in cal else None,
        "task": report["task"],
        "source": source,
    }


def _plots(folder: Path, report: dict[str, Any], records: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(DIRECTIONS)
    cols = 6
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    budgets = sorted({r["budget"] for r in records})
    for ax, name in zip(axes.flat, names, strict=False):
        for b in budgets:
            pts = [
                ((r["predictors"] or {}).get(name), measured(r, "test_accuracy"))
                for r in records
                if r["budget"] == b
            ]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, label=f"{b:g}")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, title="saved", title_fontsize=6)
    fig.supylabel("test accuracy (mean over seeds)")
    fig.subplots_adjust(
        left=0.05, right=0.99, bottom=0.05, top=0.95, wspace=0.35, hspace=0.45
    )  # tight_layout: slow
    fig.savefig(folder / "predictor_vs_accuracy.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(
        1, len(report["budgets"]), figsize=(5 * len(report["budgets"]), 5), squeeze=False
    )
    for ax, (b, g) in zip(axes.flat, report["budgets"].items(), strict=True):
        items = sorted(g["predictors"].items(), key=lambda kv: kv[1]["accuracy"]["aligned_tau"] or -9)
        for i, (name, p) in enumerate(items):
            a, d = p["accuracy"], p["direction"]
            if a["aligned_tau"] is None:
                continue
            lo, hi = sorted(d * x for x in a["tau_ci95"])
            ax.errorbar(
                a["aligned_tau"],
                i,
                xerr=[[a["aligned_tau"] - lo], [hi - a["aligned_tau"]]],
                fmt="o",
                color="C3" if name in THEORY else "C0",
                ms=4,
            )
        nc = g["noise_ceiling"]
        if nc["tau_ci95"]:
            ax.axvspan(*nc["tau_ci95"], color="0.85", label="noise ceiling (seed vs seed)")
        ax.axvline(0, color="k", lw=0.5)
        ax.set_yticks(range(len(items)), [k for k, _ in items], fontsize=7)
        ax.set_title(f"{float(b) * 100:g} % params saved", fontsize=9)
        ax.set_xlabel("aligned Kendall τ with test accuracy (95 % CI)")
        ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.1, top=0.93, wspace=0.6)
    fig.savefig(folder / "tau.png", dpi=90)
    plt.close(fig)


def write_study_report(
    folder: Path, report: dict[str, Any], records: list[dict[str, Any]], command: str | None = None
) -> None:
    write_json(folder / "report.json", report)
    write_json(folder / "candidates.json", records)
    write_text(folder / "report.md", markdown(report, command))
    write_json(folder / "best_predictor.json", best_predictor(report, str(folder / "report.json")))
    _plots(folder, report, records)
