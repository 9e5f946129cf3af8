"""What do the estimators cost, against fine-tuning the same model?

For 1-D CNNs of five widths on MNIST-1D (cnn1d, ~0.03M to 6M params; width 32 is the quickstart model),
measure on the probe set of 256 class-balanced training inputs:

- per-group NTK traces by Hutchinson (``group_ntk_traces``, groups from ``find_groups``): timed at
  ``--ntk-probes`` probes and scaled linearly to 512 (one probe = one backward pass);
- the NTK Gram (``ntk_gram``, output="trace") + spectrum: timed at 32 inputs for every model it is timed
  on; the cost at 256 inputs is measured directly for the models in ``--gram-full`` and otherwise
  extrapolated with the n-scaling measured on the 96k-param model (n = 32, 64, 128, 256);
- the Jacobian pass of ``estimate()`` (``jacobian_pass``: the Gram, exact per-entry NTK and Gauss-Newton
  diagonals, the Jacobian kept when it fits ``jacobian_elements``) + ``ntk_spectrum`` + the exact
  per-group reduction of the NTK diagonal: same inputs and the same extrapolation policy as the Gram
  (with the pass's own n-scaling);
- the Hessian trace by whole-Hessian Hutchinson (``hessian_trace``): timed at ``--hessian-probes`` probes,
  scaled to 100;
- the Hessian trace as exact Gauss-Newton + Hutchinson on the remainder (``hessian_trace`` with
  ``loss_fn=residual_loss`` and ``known_diagonal`` = the pass's GN diagonal): only the residual probes are
  timed here (the GN diagonal is part of the Jacobian pass), at ``--hessian-probes`` scaled to 100;
- the top Hessian eigenvalue by power iteration (``top_eigenvalue``): timed at ``--eig-iters`` iterations,
  scaled to 20;
- the top eigenvalues of ``estimate()`` (``top_eigenvalues``: Lanczos on G from the kept Jacobian, then
  Lanczos on H from G's eigenvector, at most 20 Hessian-vector products): measured directly, iterations
  recorded (where the Jacobian is not kept, Lanczos on H starts from a random vector, as in estimate());
- one fine-tuning epoch on MNIST-1D standard (3600 training signals, batch 64, ``prunekit.train.finetune``).
TwoNN is timed once on 10,000 MNIST-1D inputs (it does not depend on the model). Then: the log-log slope
of each cost against params; each cost as a fraction of one epoch; ``estimate()`` on the quickstart model
(cnn1d width 32 trained with configs/quickstart.yaml's ``train`` recipe) with the default EstimateConfig,
the previous default (Hutchinson NTK traces and whole-Hessian Hutchinson) and a cheaper setting, 3 seeds
each, against the quickstart's fine-tuning (one level = ``finetune.epochs`` epochs, measured directly;
the whole run = one level × the number of ``prune.levels``); and the relative standard error of the
Hutchinson per-group NTK traces at 10/50/200 probes on that model.

Every timing records wall seconds and process CPU seconds (``time.process_time``): the machine's two cores
are shared with other jobs, so wall time includes waiting; CPU time is the steadier cost. One torch thread.

Usage:  python experiments/estimator_cost.py [--out results/estimator_cost] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prunekit.config import DataConfig, EstimateConfig, ModelConfig, TrainConfig, load_config
from prunekit.data import DataSplits, load_data
from prunekit.models import build_model
from prunekit.structure import find_groups
from prunekit.structure.group import Group
from prunekit.structure.units import UnitReducer, normalise_groups, trainable_parameters
from prunekit.theory import estimate
from prunekit.theory.estimate import balanced_order
from prunekit.theory.hessian import hessian_trace, top_eigenvalue
from prunekit.theory.intrinsic_dim import twonn
from prunekit.theory.jacobian_pass import GRAM_PSD_RTOL, jacobian_pass, top_eigenvalues
from prunekit.theory.jacobian_stats import JacobianStats, residual_loss
from prunekit.theory.ntk import group_ntk_traces, ntk_gram
from prunekit.theory.spectrum import ntk_spectrum
from prunekit.train import finetune, make_accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimator_cost_report import (  # noqa: E402  (the sibling module renders the tables)
    DEFAULT,
    LABELS,
    QUICKSTART,
    slopes,
    write_outputs,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

Probe = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels) of the class-balanced probe set

# the default before the Jacobian-pass rework: Hutchinson per-group NTK traces (64 probes), whole-Hessian
# Hutchinson with 32 probes on all probe samples (the Hessian-probe defaults changed with the rework)
PREVIOUS = EstimateConfig(
    ntk_traces="hutchinson", hessian_method="hutchinson", hessian_probes=32, hessian_samples_per_probe=None
)
# the earlier "cheap" setting (sized towards the 10 % goal before the rework) on the new estimators: 64 probe
# inputs (so C_arch is not comparable with one on 256), 8 residual Hessian probes, 5 H·v, 1,000 TwoNN points
CHEAP = EstimateConfig(probe_samples=64, hessian_probes=8, power_iters=5, id_samples=1000)
EIG_ITERS = 20  # Hessian-vector products (at most) for top_eigenvalues, as EstimateConfig().power_iters
LOADS: list[tuple[str, float]] = []  # 1-minute load average at each stage


def note_load(stage: str) -> None:
    LOADS.append((stage, os.getloadavg()[0]))


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict[str, float]]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}


def scale(t: dict[str, float], factor: float) -> dict[str, Any]:
    return {k: v * factor for k, v in t.items()} | {"scaled": factor != 1}


def probe_batch(splits: DataSplits, n: int, seed: int = 0) -> Probe:
    idx = balanced_order(splits.labels("train"), seed)[:n]
    x = torch.from_numpy(np.ascontiguousarray(splits.arrays("train").inputs[idx]))
    return x, torch.from_numpy(splits.labels("train")[idx])


def cnn(width: int, splits: DataSplits) -> nn.Module:
    return build_model(
        ModelConfig(name="cnn1d", kwargs={"width": width}), splits.num_classes, splits.input_shape
    )


def epoch_time(model: nn.Module, splits: DataSplits, accelerator: Accelerator) -> dict[str, float]:
    cfg = TrainConfig(epochs=1, batch_size=64, lr=1e-3)
    loader = splits.loader("train", 64, shuffle=True, seed=0)
    _, t = timed(finetune, model, loader, cfg, accelerator, desc="epoch")
    return t


def exact_group_traces(model: nn.Module, stats: JacobianStats, groups: list[Group]) -> dict[str, float]:
    """Per-group NTK traces summed from the pass's exact per-entry NTK diagonal (what estimate() does)."""
    diag = stats.per_tensor("ntk")
    specs, _ = normalise_groups(groups, model)
    shapes = {k: v.shape for k, v in diag.items()}
    return {g: float(UnitReducer(units, shapes)(diag)[1]) for g, units in specs}


def pass_cost(model: nn.Module, batch: Probe, groups: list[Group]) -> tuple[dict[str, Any], JacobianStats]:
    """Seconds of the Jacobian pass + spectrum + exact per-group traces, and the pass's statistics."""

    def run() -> JacobianStats:
        gram, stats, _ = jacobian_pass(model, batch, DEFAULT.jacobian_elements)
        ntk_spectrum(gram, ridge=DEFAULT.ridge, psd_rtol=GRAM_PSD_RTOL)
        exact_group_traces(model, stats, groups)
        return stats

    stats, t = timed(run)
    return t | {"jacobian_kept": stats.has_jacobian}, stats


def gram_cost(model: nn.Module, batch: Probe) -> dict[str, float]:
    def run() -> dict[str, object]:
        return ntk_spectrum(ntk_gram(model, batch, output="trace"))

    return timed(run)[1]


def warm_up(model: nn.Module, batch: Probe, groups: list[Group], gram: bool = True) -> None:
    """One tiny call of each estimator: first calls pay one-off costs (tracing, allocator) not to time."""
    small = (batch[0][:4], batch[1][:4])
    if gram:
        ntk_spectrum(ntk_gram(model, small, output="trace"))
    _, stats = pass_cost(model, small, groups)
    hessian_trace(model, [small], num_probes=1)
    gn = list(stats.per_tensor("gn").values())
    hessian_trace(model, [small], num_probes=1, loss_fn=residual_loss, known_diagonal=gn)
    top_eigenvalues(model, small, stats, 2, 0)
    group_ntk_traces(model, small, groups, num_probes=2)


def measure_model(
    width: int, splits: DataSplits, accelerator: Accelerator, args: argparse.Namespace, gram: str
) -> dict[str, Any]:
    """``gram``: "full" (timed at 256 inputs), "32" (timed at 32, extrapolated) or "skip" (not timed)."""
    model = cnn(width, splits)
    params = sum(p.numel() for p in model.parameters())
    probe = probe_batch(splits, 256)
    groups = find_groups(model, probe[0][:2])
    row: dict[str, Any] = {
        "model": f"cnn1d width {width}",
        "width": width,
        "params": params,
        "groups": len(groups),
    }
    note_load(row["model"])
    warm_up(model, probe, groups, gram=gram != "skip")
    # past 1M params each probe is long enough that a few of them time it well; keep the run short
    big = params > 1_000_000
    k_ntk, k_h, k_eig = (8, 4, 3) if big else (args.ntk_probes, args.hessian_probes, args.eig_iters)
    _, t = timed(group_ntk_traces, model, probe, groups, num_probes=k_ntk)
    row["ntk_traces_512"] = scale(t, 512 / k_ntk) | {"measured_probes": k_ntk}
    stats = None
    if gram != "skip":
        small = probe_batch(splits, 32)
        row["gram_32"] = gram_cost(model, small)
        row["jacobian_pass_32"], _ = pass_cost(model, small, groups)
    if gram == "full":
        row["gram_256"] = gram_cost(model, probe) | {"measured_inputs": 256}
        row["jacobian_pass_256"], stats = pass_cost(model, probe, groups)
        row["jacobian_pass_256"]["measured_inputs"] = 256
    hb = [(probe[0][i : i + 128], probe[1][i : i + 128]) for i in (0, 128)]
    _, t = timed(hessian_trace, model, hb, num_probes=k_h)
    row["hessian_trace_100"] = scale(t, 100 / k_h) | {"measured_probes": k_h}
    # the residual probes cost the same whatever the known diagonal is: where the pass at 256 inputs was
    # not run, a zero diagonal of the right shapes stands in for it
    gn = (
        list(stats.per_tensor("gn").values())
        if stats is not None
        else [torch.zeros_like(p) for p in trainable_parameters(model).values()]
    )
    _, t = timed(hessian_trace, model, hb, num_probes=k_h, loss_fn=residual_loss, known_diagonal=gn)
    row["hessian_gn_100"] = scale(t, 100 / k_h) | {"measured_probes": k_h}
    # the same on the default's random subset of hessian_samples_per_probe samples per probe (JSON only)
    sub = DEFAULT.hessian_samples_per_probe
    _, t = timed(
        hessian_trace,
        model,
        hb,
        num_probes=k_h,
        loss_fn=residual_loss,
        known_diagonal=gn,
        samples_per_probe=sub,
    )
    row["hessian_gn_100_subset"] = scale(t, 100 / k_h) | {"measured_probes": k_h, "samples_per_probe": sub}
    # tol=1e-300 forbids early stopping, so exactly k_eig Hessian-vector products are timed
    _, t = timed(top_eigenvalue, model, hb, iters=k_eig, tol=1e-300)
    row["top_eigenvalue_20"] = scale(t, 20 / k_eig) | {"measured_iters": k_eig}
    # estimate()'s top eigenvalues, measured directly; without the 256-input pass (or where the Jacobian
    # does not fit jacobian_elements) there is no kept Jacobian and Lanczos on H starts from a random vector
    if stats is None:
        stats = JacobianStats(trainable_parameters(model), None, 0)
    top, t = timed(top_eigenvalues, model, probe, stats, EIG_ITERS, 0)
    row["top_eigenvalues"] = t | {
        "hessian_iters": top["iters"],
        "max_iters": EIG_ITERS,
        "converged": top["converged"],
        "start": top["start"],
        "gauss_newton_iters": top.get("gauss_newton", {}).get("iters"),
    }
    del stats
    row["epoch"] = epoch_time(model, splits, accelerator)
    print(json.dumps(row), flush=True)
    return row


def n_scaling(width: int, splits: DataSplits, sizes: list[int]) -> dict[str, Any]:
    """Cost against the number of inputs of the Gram (``ntk_gram``) and of the Jacobian pass."""
    model = cnn(width, splits)
    groups = find_groups(model, probe_batch(splits, 2)[0])
    warm_up(model, probe_batch(splits, 8), groups)
    out: dict[str, Any] = {"width": width, "sizes": sizes}
    ns = np.log(sizes)
    for what, cost in (
        ("gram", lambda b: gram_cost(model, b)),
        ("jacobian_pass", lambda b: pass_cost(model, b, groups)[0]),
    ):
        costs = {n: cost(probe_batch(splits, n)) for n in sizes}
        res: dict[str, Any] = {"costs": {str(n): c for n, c in costs.items()}}
        for key in ("wall_s", "cpu_s"):
            res[f"exponent_{key}"] = float(np.polyfit(ns, np.log([costs[n][key] for n in sizes]), 1)[0])
        res["ratio_256_over_32"] = {k: costs[sizes[-1]][k] / costs[sizes[0]][k] for k in ("wall_s", "cpu_s")}
        out[what] = res
    print(json.dumps(out), flush=True)
    return out


def relative_se(model: nn.Module, probe: Probe, groups: list[Group], probes: list[int]) -> dict[str, Any]:
    tr = group_ntk_traces(model, probe, groups, num_probes=max(probes), seed=1)
    out: dict[str, Any] = {}
    for k in probes:
        rel = []
        for g in tr.group_probes:
            v = tr.group_probes[g][:k].numpy()
            rel.append(float(v.std(ddof=1) / np.sqrt(k) / v.mean()))
        out[str(k)] = {"median": float(np.median(rel)), "max": float(np.max(rel)), "per_group": rel}
    return out


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def quickstart(splits: DataSplits, accelerator: Accelerator, args: argparse.Namespace) -> dict[str, Any]:
    """estimate() on the trained quickstart model, three configs × three seeds, against its fine-tuning."""
    qcfg = load_config(QUICKSTART)
    train_cfg = (
        qcfg.train.model_copy(update={"epochs": args.train_epochs}) if args.train_epochs else qcfg.train
    )
    model = build_model(qcfg.model, splits.num_classes, splits.input_shape)
    note_load("quickstart training")
    hist, t_train = timed(
        finetune,
        model,
        splits.loader("train", train_cfg.batch_size, shuffle=True, seed=0),
        train_cfg,
        accelerator,
        desc="dense",
    )
    probe = probe_batch(splits, 256)
    groups = find_groups(model, probe[0][:2])
    warm_up(model, probe, groups)
    # one level's fine-tuning, timed directly on copies of the dense model (the quickstart's finetune recipe)
    ft_cfg = qcfg.finetune
    ft_measured = min(ft_cfg.epochs, 1.0) if args.quick else ft_cfg.epochs
    levels = len(qcfg.prune.levels)
    ft_times = []
    for _ in range(args.ft_repeats):
        _, t = timed(
            finetune,
            copy.deepcopy(model),
            splits.loader("train", ft_cfg.batch_size, shuffle=True, seed=0),
            ft_cfg.model_copy(update={"epochs": ft_measured}),
            accelerator,
            desc="finetune level",
        )
        ft_times.append(scale(t, ft_cfg.epochs / ft_measured))
    level = {k: _median([t[k] for t in ft_times]) for k in ("wall_s", "cpu_s")}
    whole = {k: levels * v for k, v in level.items()}
    note_load("quickstart estimates")
    configs = {"default": DEFAULT, "previous default": PREVIOUS, "cheap": CHEAP}
    if args.quick:
        tiny = {
            "probe_samples": 32,
            "trace_probes": 4,
            "hessian_probes": 2,
            "power_iters": 2,
            "id_samples": 500,
        }
        configs = {k: v.model_copy(update=tiny) for k, v in configs.items()}
    seeds = [0, 1, 2]
    per_seed: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
    for seed in seeds:  # interleaved, so a busy spell on the shared machine hits every config alike
        for name, cfg in configs.items():
            est, t = timed(estimate, model, splits, cfg, groups=groups, seed=seed)
            per_seed[name].append(
                {
                    "seed": seed,
                    **t,
                    "seconds_per_estimator": est.seconds,
                    "C_arch": est.C_arch,
                    "T_opt": est.T_opt,
                    "T_opt_se": est.hessian["normalized_trace_se"],
                    "hessian_trace": est.hessian["trace"],
                    "gauss_newton_trace": est.hessian.get("gauss_newton_trace"),
                    "d_eff": est.d_eff,
                    "bound": est.bound,
                    "top_eigenvalue": est.hessian_top_eigenvalue,
                    "top_eigenvalue_iters": est.hessian["top_eigenvalue"].get("iters"),
                    "top_eigenvalue_start": est.hessian["top_eigenvalue"].get("start"),
                    "gauss_newton_top": est.hessian["top_eigenvalue"].get("gauss_newton"),
                    "ntk_group_traces": {g: v.get("ntk_trace") for g, v in est.groups.items()},
                    "probe_samples_shared": est.settings.get("probe_samples_shared"),
                    "notes": est.notes,
                }
            )
            print(json.dumps({"config": name, **per_seed[name][-1]}, default=str), flush=True)
    runs = {}
    for name, cfg in configs.items():
        rs = per_seed[name]
        med = {k: _median([r[k] for r in rs]) for k in ("cpu_s", "wall_s")}
        keys = rs[0]["seconds_per_estimator"]
        runs[name] = {
            "estimate_config": cfg.model_dump(),
            "per_seed": rs,
            "median": med,
            "median_seconds_per_estimator": {
                k: _median([r["seconds_per_estimator"][k] for r in rs]) for k in keys
            },
            "median_T_opt_se": _median([r["T_opt_se"] for r in rs]),
            "T_opt_spread": float(np.std([r["T_opt"] for r in rs], ddof=1)),
            "fraction_of_level": {k: med[k] / level[k] for k in med},
            "fraction_of_whole": {k: med[k] / whole[k] for k in med},
        }
    # variance of T_opt per unit of cost (SE² × seconds): what it takes to reach a given standard error
    a, b = runs["default"], runs["previous default"]
    efficiency = {
        "se_ratio_previous_over_default": b["median_T_opt_se"] / a["median_T_opt_se"],
        "per_estimate_cpu_s": (b["median_T_opt_se"] ** 2 * b["median"]["cpu_s"])
        / (a["median_T_opt_se"] ** 2 * a["median"]["cpu_s"]),
        "per_hessian_trace_s": (
            b["median_T_opt_se"] ** 2 * b["median_seconds_per_estimator"]["hessian_trace"]
        )
        / (a["median_T_opt_se"] ** 2 * a["median_seconds_per_estimator"]["hessian_trace"]),
    }
    out = {
        "runs": runs,
        "seeds": seeds,
        "variance_reduction": efficiency,
        "train": train_cfg.model_dump(),
        "train_time": t_train,
        "train_final_loss": (hist.get("train_loss") or [None])[-1],
        "finetune": ft_cfg.model_dump(),
        "finetune_epochs": ft_cfg.epochs,
        "finetune_epochs_measured": ft_measured,
        "finetune_level_runs": ft_times,
        "finetune_level": level,
        "levels": levels,
        "finetune_whole": whole,
        "epoch": {k: v / ft_cfg.epochs for k, v in level.items()},
        "relative_se": relative_se(model, probe, groups, [10, 50, 200] if not args.quick else [3, 5, 10]),
    }
    print(json.dumps({k: v for k, v in out.items() if k not in ("relative_se", "runs")}), flush=True)
    return out


def git_commit() -> str:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "prunekit"], capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "?"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/estimator_cost")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 56, 112, 224, 448])
    ap.add_argument(
        "--gram-skip",
        type=int,
        nargs="+",
        default=[448],
        help="widths whose Gram / pass is not timed (too slow)",
    )
    ap.add_argument(
        "--gram-full",
        type=int,
        nargs="+",
        default=[32, 56],
        help="widths whose Gram / pass is timed at n=256",
    )
    ap.add_argument("--ntk-probes", type=int, default=32)
    ap.add_argument("--hessian-probes", type=int, default=10)
    ap.add_argument("--eig-iters", type=int, default=5)
    ap.add_argument(
        "--train-epochs",
        type=float,
        default=None,
        help=f"dense training epochs of the quickstart model (default: {QUICKSTART}'s train.epochs)",
    )
    ap.add_argument("--ft-repeats", type=int, default=3, help="timings of one level's fine-tuning (median)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (not a measurement)")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md/.png from a saved .json")
    args = ap.parse_args()
    if args.render:
        write_outputs(json.loads(Path(args.render).read_text()), Path(args.out))
        return
    torch.set_num_threads(1)
    t_start, c_start = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()
    commit_start = git_commit()
    accelerator = make_accelerator(seed=0)
    splits = load_data(DataConfig(name="mnist1d"), seed=0)
    n_sizes = [32, 64, 128, 256]
    scaling_width = 56
    if args.quick:
        args.widths, args.gram_full, args.gram_skip, n_sizes, scaling_width = (
            [8, 16, 24],
            [8],
            [24],
            [16, 32],
            8,
        )
        args.ntk_probes, args.hessian_probes, args.eig_iters, args.train_epochs = 4, 2, 2, 0.2
        args.ft_repeats = 1

    note_load("TwoNN")
    large = load_data(DataConfig(name="mnist1d", variant="large"), seed=0)
    pts = large.arrays("train").inputs[:10_000].reshape(10_000, -1)
    tw, t_twonn = timed(twonn, pts)
    print(json.dumps({"twonn_10k": t_twonn, "d": tw["d"]}), flush=True)

    note_load("n-scaling")
    scaling = n_scaling(scaling_width, splits, n_sizes)

    def gram_mode(w: int) -> str:
        return "full" if w in args.gram_full else "skip" if w in args.gram_skip else "32"

    # the first fine-tuning call of a process pays one-off costs (~1 s): pay them before any epoch is timed
    finetune(
        cnn(8, splits),
        splits.loader("train", 64, shuffle=True, seed=0),
        TrainConfig(max_steps=3),
        accelerator,
        desc="warm-up",
    )
    rows = [measure_model(w, splits, accelerator, args, gram_mode(w)) for w in args.widths]
    for r in rows:
        for what in ("gram", "jacobian_pass"):
            if f"{what}_256" not in r and f"{what}_32" in r:
                ratio = scaling[what]["ratio_256_over_32"]
                r[f"{what}_256"] = {k: r[f"{what}_32"][k] * ratio[k] for k in ("wall_s", "cpu_s")}
                r[f"{what}_256"]["extrapolated"] = True
        r["twonn_10k"] = dict(t_twonn)  # a copy per row: its fraction of an epoch is per model
        if "jacobian_pass_256" in r:  # what the default estimate() spends on this model, from its parts
            parts = [
                r["jacobian_pass_256"],
                scale(r["hessian_gn_100_subset"], DEFAULT.hessian_probes / 100),
                r["top_eigenvalues"],
                t_twonn,  # 10k points: an upper bound for the default's 2,000
            ]
            r["default_estimate"] = {k: sum(x[k] for x in parts) for k in ("wall_s", "cpu_s")}
            r["default_estimate"]["assembled"] = True
        for k in LABELS:
            if k in r and k != "epoch":
                r[k]["fraction_of_epoch_cpu"] = r[k]["cpu_s"] / r["epoch"]["cpu_s"]
    qs = quickstart(splits, accelerator, args)
    note_load("end")
    result = {
        "command": "python " + " ".join(sys.argv),
        "commit": commit_start,
        "commit_end": git_commit(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs shared with other jobs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "load_averages": LOADS,
        "runtime_s": time.perf_counter() - t_start,
        "runtime_cpu_s": time.process_time() - c_start,
        "twonn_10k": t_twonn | {"d": tw["d"]},
        "n_scaling": scaling,
        "models": rows,
        "loglog_slope_cpu_vs_params": slopes(
            rows,
            [
                "ntk_traces_512",
                "gram_32",
                "gram_256",
                "jacobian_pass_32",
                "jacobian_pass_256",
                "hessian_trace_100",
                "hessian_gn_100",
                "top_eigenvalue_20",
                "top_eigenvalues",
                "default_estimate",
                "epoch",
            ],
        ),
        "quickstart": qs,
    }
    write_outputs(result, Path(args.out))


if __name__ == "__main__":
    main()
