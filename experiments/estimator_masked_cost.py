"""The cost of one masked evaluation (``Estimator.predict``) against ``estimate()`` and a fine-tuning epoch.

A planner asks the Estimator about many masked variants of one model; this measures what one such
question costs, for the quickstart model (cnn1d width 32 on MNIST-1D, trained with the quickstart's
``train`` recipe) and for the pretrained MiniLM on tweets (its head untrained: the cost does not depend
on the weights), each with half of every group's units removed (lowest L2 norm first):

- ``estimate()``: the full estimates, default EstimateConfig (MiniLM: a small probe set, stated);
- building the Estimator (probe set, d_eff) — paid once per model and data;
- ``predict(removed)``: the default masked setting (one Jacobian pass: Gram, logits, exact Gauss-Newton
  T_opt); ``predict(removed, hessian="full")``: plus the Hutchinson remainder of the Hessian;
- one fine-tuning epoch with the model's fine-tuning recipe (MiniLM: 12 timed steps, scaled).

Every time is a median of ``--repeats`` runs; CPU seconds (``time.process_time``) and wall seconds. The
machine is shared with other jobs: wall above CPU means waiting for a core; the spread over repeats is
recorded. Also measured on the quickstart model: how much of the full T_opt the Gauss-Newton part
carries at 0–70 % of the units removed (the faithfulness of the default).

Usage:  OMP_NUM_THREADS=1 python experiments/estimator_masked_cost.py [--models quickstart minilm]
        [--repeats 5] [--out results/estimator_masked_cost]
Writes OUT.json and OUT.md, and the same section into results/estimator_cost.md (between markers).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prunekit.batch import take  # noqa: E402
from prunekit.config import DataConfig, EstimateConfig, ModelConfig, load_config  # noqa: E402
from prunekit.data import load_data  # noqa: E402
from prunekit.models import build_model  # noqa: E402
from prunekit.structure import find_groups  # noqa: E402
from prunekit.theory import Estimator, estimate  # noqa: E402
from prunekit.train import finetune, make_accelerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
MINILM_IGNORE = ["*embeddings*", "classifier", "*pooler*"]
MINILM_CFG = EstimateConfig(probe_samples=16, hessian_samples_per_probe=16, id_samples=500)
MARK_START, MARK_END = "<!-- estimator_masked_cost:start -->", "<!-- estimator_masked_cost:end -->"


def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}


def repeat(fn: Callable[[], Any], n: int) -> tuple[Any, dict[str, Any]]:
    runs = [timed(fn) for _ in range(n)]
    cpu = [t["cpu_s"] for _, t in runs]
    wall = [t["wall_s"] for _, t in runs]
    stats = {
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
        "cpu_runs": cpu,
        "wall_runs": wall,
        "repeats": n,
        "load_1min": os.getloadavg()[0],
    }
    return runs[-1][0], stats


def lowest_l2(model: torch.nn.Module, groups: list, fraction: float) -> dict[str, list[int]]:
    """Each group's ``fraction`` of units with the smallest L2 norm over their own slices."""
    params = dict(model.named_parameters())
    out = {}
    for g in groups:
        norms = torch.zeros(g.num_units, dtype=torch.float64)
        for s in g.slices:
            p = params.get(s.param)
            if p is None:
                continue
            for u, idx in enumerate(s.index):
                norms[u] += (
                    p.detach().index_select(s.dim, torch.tensor(idx, dtype=torch.long)).double().pow(2).sum()
                )
        k = min(int(fraction * g.num_units), g.num_units - g.min_units)
        if k > 0:
            out[g.name] = sorted(torch.argsort(norms, stable=True)[:k].tolist())
    return out


def measure(
    model, data, cfg, groups, removed, epoch: Callable[[], float | dict], repeats: int, full_repeats: int
):
    """The timings for one model (see the module docstring)."""
    predict_hessian = {}
    est, t_build = repeat(lambda: Estimator(model, data, cfg, groups=groups, seed=0), 1)
    est.predict(removed)  # warm-up: first-call costs (hooks self-check, allocator)
    p, t_pred = repeat(lambda: est.predict(removed), repeats)
    pf, t_full_pred = repeat(lambda: est.predict(removed, hessian="full"), max(1, repeats // 2))
    e, t_est = repeat(lambda: estimate(model, data, cfg, groups=groups, seed=0), full_repeats)
    t_epoch = epoch()
    predict_hessian = {"gauss_newton_T": p.T_opt, "full_T": pf.T_opt, "full_T_se": pf.T_opt_se}
    return {
        "estimate": t_est,
        "estimator_build": t_build,
        "predict": t_pred,
        "predict_full_hessian": t_full_pred,
        "epoch": t_epoch,
        "prediction": p.to_dict(),
        "estimates": {"C_arch": e.C_arch, "T_opt": e.T_opt, "d_eff": e.d_eff, "seconds": e.seconds},
        "masked_T": predict_hessian,
        "removed_units": p.removed_units,
        "units": sum(g.num_units for g in groups),
        "params": sum(q.numel() for q in model.parameters()),
        "params_remaining": p.params,
        "settings": cfg.model_dump(),
    }


def quickstart(repeats: int) -> dict[str, Any]:
    qcfg = load_config(QUICKSTART)
    splits = load_data(qcfg.data, seed=0)
    accelerator = make_accelerator(seed=0)
    model = build_model(qcfg.model, splits.num_classes, splits.input_shape)
    loader = splits.loader("train", qcfg.train.batch_size, shuffle=True, seed=0)
    finetune(model, loader, qcfg.train, accelerator, desc="dense")
    model.eval()
    x = torch.from_numpy(splits.arrays("train").inputs[:2])
    groups = find_groups(model, x)
    removed = lowest_l2(model, groups, 0.5)

    def epoch() -> dict[str, Any]:
        ft = qcfg.finetune.model_copy(update={"epochs": 1})
        fl = splits.loader("train", ft.batch_size, shuffle=True, seed=0)
        return repeat(lambda: finetune(copy.deepcopy(model), fl, ft, accelerator, desc="epoch"), 3)[1]

    row = measure(model, splits, EstimateConfig(), groups, removed, epoch, repeats, repeats)
    est = Estimator(model, splits, EstimateConfig(), groups=groups, seed=0)
    row["faithfulness"] = []
    for frac in (0.0, 0.25, 0.5, 0.7):
        rm = lowest_l2(model, groups, frac)
        gn, full = est.predict(rm), est.predict(rm, hessian="full")
        row["faithfulness"].append(
            {
                "fraction": frac,
                "C_arch": gn.C_arch,
                "train_loss": gn.train_loss,
                "train_accuracy": gn.train_accuracy,
                "gauss_newton_T": gn.T_opt,
                "full_T": full.T_opt,
                "full_T_se": full.T_opt_se,
            }
        )
    row["model"] = "quickstart: cnn1d width 32, trained (configs/quickstart.yaml train recipe)"
    row["epoch_what"] = "one epoch of the quickstart finetune recipe (3600 signals, batch 64), median of 3"
    return row


def minilm(repeats: int) -> dict[str, Any]:
    from estimator_cost_minilm import epoch_seconds

    model_cfg = ModelConfig(name="minilm")
    data_cfg = DataConfig(name="tweet_sentiment", max_train_samples=2400, max_length=64)
    try:
        splits = load_data(data_cfg, seed=0, model_cfg=model_cfg)
    except TypeError:  # the loader no longer takes the model config (tokenizer passed by the caller)
        splits = load_data(data_cfg, seed=0)
    model = build_model(model_cfg, splits.num_classes, splits.input_shape).eval()
    x, _ = take(splits.loader("train", 2), 2)
    groups = find_groups(model, x, ignore=MINILM_IGNORE)
    removed = lowest_l2(model, groups, 0.5)
    steps = len(splits.loader("train", 32))

    def epoch() -> dict[str, Any]:
        runs = [
            epoch_seconds(copy.deepcopy(model), splits.loader("train", 32, shuffle=True, seed=0), 12, steps)
            for _ in range(2)
        ]
        return {
            "cpu_s": statistics.median(runs),
            "wall_s": None,
            "cpu_runs": runs,
            "repeats": 2,
            "scaled": f"12 of {steps} steps (batch 32)",
        }

    row = measure(model, splits, MINILM_CFG, groups, removed, epoch, repeats, 1)
    model.eval()
    row["model"] = "all-MiniLM-L6-v2 + 3-class head (pretrained encoder, untrained head)"
    row["epoch_what"] = (
        f"one epoch on 2,400 tweets, batch 32 (12 of {steps} steps timed, scaled), median of 2"
    )
    return row


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["quickstart", "minilm"], choices=["quickstart", "minilm"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="results/estimator_masked_cost")
    ap.add_argument("--render", action="store_true", help="rewrite the markdown from the saved JSON only")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        render(json.loads(out.with_suffix(".json").read_text()), out)
        return
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 python experiments/estimator_masked_cost.py "
        + f"--models {' '.join(args.models)} --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs shared with other jobs; "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "commit": git_commit(),
        "load_start": os.getloadavg()[0],
        "rows": {},
    }
    for name in args.models:
        print(f"measuring {name} ...", flush=True)
        result["rows"][name] = quickstart(args.repeats) if name == "quickstart" else minilm(args.repeats)
        print(
            json.dumps(
                {
                    name: {
                        k: v for k, v in result["rows"][name].items() if k in ("predict", "estimate", "epoch")
                    }
                }
            ),
            flush=True,
        )
    result["load_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    render(result, out)


def _fmt(t: dict[str, Any] | None, key: str = "cpu_s") -> str:
    if not t or t.get(key) is None:
        return "–"
    return f"{t[key]:.2f}"


def section(result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    lines = [
        "## One masked evaluation (`Estimator.predict`) against `estimate()` and a fine-tuning epoch",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}; code at commit `{result['commit']}`; "
        f"1-minute load average {result['load_start']:.1f} at the start, {result.get('load_end', float('nan')):.1f} "
        "at the end (2 cores shared with other engineers' jobs: wall above CPU is waiting for a core, so read "
        "the CPU seconds and the ratios).",
        "",
        "Cells: median CPU seconds [median wall seconds] over the repeats (count in brackets after the model). "
        "Masked variant: half of every group's units removed (lowest L2 norm), zeroed at fixed weights. "
        "`predict` = the default masked setting: one Jacobian pass (NTK Gram → C_arch, logits → train loss / "
        'accuracy, exact Gauss-Newton diagonal → T_opt); `hessian="full"` adds the configured Hutchinson '
        "probes of the Hessian's remainder. Building the Estimator (probe set, d_eff by TwoNN) is paid once "
        "per model and data.",
        "",
        "| model | params | units removed | `estimate()` | Estimator build (once) | `predict` (default) | "
        '`predict(hessian="full")` | one fine-tuning epoch | `predict` / `estimate()` | `predict` / epoch |',
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        est, pred, epoch = r["estimate"], r["predict"], r["epoch"]
        lines.append(
            f"| {name} ({pred['repeats']} repeats; estimate() {est['repeats']}) | {r['params']:,} | "
            f"{r['removed_units']} of {r['units']} | {_fmt(est)} [{_fmt(est, 'wall_s')}] | "
            f"{_fmt(r['estimator_build'])} [{_fmt(r['estimator_build'], 'wall_s')}] | "
            f"**{_fmt(pred)}** [{_fmt(pred, 'wall_s')}] | {_fmt(r['predict_full_hessian'])} "
            f"[{_fmt(r['predict_full_hessian'], 'wall_s')}] | {_fmt(epoch)} [{_fmt(epoch, 'wall_s')}] | "
            f"**{pred['cpu_s'] / est['cpu_s']:.2f}** | **{pred['cpu_s'] / epoch['cpu_s']:.2f}** |"
        )
    lines += ["", "Models and settings:", ""]
    for r in rows.values():
        s = r["settings"]
        spread = r["predict"]["cpu_runs"]
        lines.append(
            f"- {r['model']}; EstimateConfig probe_samples={s['probe_samples']}, "
            f"hessian_probes={s['hessian_probes']}, hessian_samples_per_probe={s['hessian_samples_per_probe']}, "
            f"power_iters={s['power_iters']}, id_samples={s['id_samples']}; epoch: {r['epoch_what']}. "
            f"`predict` CPU s per repeat: {', '.join(f'{t:.2f}' for t in spread)}; params remaining "
            f"{r['params_remaining']:,}."
        )
    q = rows.get("quickstart")
    if q and q.get("faithfulness"):
        lines += [
            "",
            "Faithfulness of the default T_opt (quickstart model, the same Estimator, lowest-L2 units removed "
            "from every group): the Gauss-Newton part against the full T_opt (GN + 8 Hutchinson probes of the "
            "remainder on 64-sample subsets).",
            "",
            "| removed | train loss (probe set) | train accuracy | C_arch | T_opt Gauss-Newton (default) | "
            "T_opt full ± SE | GN / full |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for f in q["faithfulness"]:
            lines.append(
                f"| {f['fraction']:.0%} | {f['train_loss']:.4f} | {f['train_accuracy']:.3f} | {f['C_arch']:.1f} | "
                f"{f['gauss_newton_T']:.4g} | {f['full_T']:.4g} ± {f['full_T_se']:.2g} | "
                f"{f['gauss_newton_T'] / f['full_T']:.3f} |"
            )
    lines += ["", *reading(rows)]
    return lines


def reading(rows: dict[str, Any]) -> list[str]:
    """What the numbers say, computed from them (a rerun cannot leave stale claims)."""
    out = ["Reading:", ""]
    for name, r in rows.items():
        pred, est, epoch = r["predict"]["cpu_s"], r["estimate"]["cpu_s"], r["epoch"]["cpu_s"]
        out.append(
            f"- {name}: one masked evaluation costs {pred:.2f} CPU s = {pred / est:.0%} of a full `estimate()` "
            f"({est:.2f} s) and {pred / epoch:.2f} fine-tuning epochs ({epoch:.2f} s); with the Hutchinson "
            f"remainder {r['predict_full_hessian']['cpu_s']:.2f} s. A planner comparing k variants pays the "
            f"build once ({r['estimator_build']['cpu_s']:.2f} s) and k × {pred:.2f} s. Noise: the `predict` "
            f"repeats spread {min(r['predict']['cpu_runs']):.2f}–{max(r['predict']['cpu_runs']):.2f} CPU s on the "
            f'shared machine, and `hessian="full"` had {r["predict_full_hessian"]["repeats"]} repeats, so '
            "differences under ~30 % between cells are not resolved."
        )
    q = rows.get("quickstart")
    if q and q.get("faithfulness"):
        shares = [f["gauss_newton_T"] / f["full_T"] for f in q["faithfulness"] if f["full_T"]]
        out.append(
            f"- The Gauss-Newton part carries {min(shares):.0%}–{max(shares):.0%} of the full T_opt from 0 to "
            f"{q['faithfulness'][-1]['fraction']:.0%} of the units removed on the trained quickstart model; "
            'use `hessian="full"` where the remainder matters (e.g. to match a calibration fitted on '
            "`estimate()`'s T_opt far from a minimum)."
        )
    return out


def render(result: dict[str, Any], out: Path) -> None:
    text = "\n".join(section(result))
    out.with_suffix(".md").write_text(text + "\n")
    target = ROOT / "results" / "estimator_cost.md"
    if target.exists():
        old = target.read_text()
        block = f"{MARK_START}\n{text}\n{MARK_END}"
        if MARK_START in old and MARK_END in old:
            head, rest = old.split(MARK_START, 1)
            new = head + block + rest.split(MARK_END, 1)[1]
        else:
            new = old.rstrip("\n") + "\n\n" + block + "\n"
        target.write_text(new)
    print(text)


if __name__ == "__main__":
    main()
