"""``prunekit estimate CONFIG``: run :func:`prunekit.theory.estimate` on a config's dense model,
print a summary and write ``estimate.json``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prunekit.batch import move_to

if TYPE_CHECKING:
    from prunekit.theory.estimate import Estimates


def _num(x: Any, se: Any = None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if se is None else f"{x:.4g} ± {se:.2g}"


def _hessian_method(h: dict[str, Any]) -> str:
    if h.get("method") == "gauss_newton":
        per = h.get("samples_per_probe")
        return f"exact Gauss-Newton + {h.get('num_probes')} residual probes of {per} samples"
    return f"{h.get('num_probes')} {h.get('method', 'hutchinson')} probes"


def _gauss_newton_top(h: dict[str, Any]) -> str:
    gn = (h.get("top_eigenvalue") or {}).get("gauss_newton")
    return f"  (Gauss-Newton: {_num(gn['eigenvalue'])})" if gn else ""


def format_summary(est: Estimates) -> str:
    """A readable summary: the bound's quantities, the top groups and the seconds per estimator."""
    h = est.hessian
    lines = [
        f"C_arch (NTK d_λ, ridge {est.ntk.get('ridge')})".ljust(40)
        + f": {_num(est.C_arch)}  on {est.settings['probe_samples']} inputs",
        f"T_opt (layer-normalised Hessian trace)  : {_num(est.T_opt, h.get('normalized_trace_se'))}"
        f"  ({_hessian_method(h)})",
        f"top Hessian eigenvalue                  : {_num(est.hessian_top_eigenvalue)}"
        + _gauss_newton_top(h),
        f"n (training samples)                    : {est.n}",
        f"d_eff (TwoNN on {est.intrinsic_dim['representation']})".ljust(40) + f": {_num(est.d_eff)}",
        f"bound sqrt(C·T/(n·d_eff))               : {_num(est.bound)}",
    ]
    exact_ntk = est.ntk.get("group_traces") == "exact"
    for title, rows in (("NTK trace", est.top_groups_ntk), ("Hessian trace", est.top_groups_hessian)):
        if rows:
            how = " (exact)" if title == "NTK trace" and exact_ntk else ""
            lines.append(f"top {len(rows)} groups by {title}{how}:")
            lines += [f"  {r['name']:<44s} {_num(r['trace'], None if how else r['se'])}" for r in rows]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in est.seconds.items()))
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)


def run_estimate_command(cfg: Any, output: Any | None = None) -> dict[str, Any]:
    """``prunekit estimate CONFIG``: estimates for the config's dense model; writes estimate.json.

    The model is, in order of preference: ``model.checkpoint``; the ``dense`` checkpoint of an earlier
    ``prunekit run`` in the output folder; or the built model, trained with ``train`` when
    ``train.epochs > 0`` (not saved). ``output``: a folder (estimate.json goes inside) or a ``.json`` path;
    default the run's output folder. Returns the estimates as a dict (with ``model_source``).
    """
    from prunekit.train import make_accelerator

    accelerator = make_accelerator(seed=cfg.seed)
    with _progress_lines(accelerator.is_main_process):
        return _run(cfg, output, accelerator)


def estimate_command(
    source: str,
    overrides: list[str] | None = None,
    output: str | None = None,
    expected_sha256: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """``prunekit estimate SOURCE``: SOURCE is a run config, or a checkpoint folder (then that model is
    estimated on its run's data, and the JSON goes next to the folder unless ``output`` says otherwise)."""
    from pathlib import Path

    from prunekit.commands.checkpoint import config_for_checkpoint
    from prunekit.config import load_config

    out = Path(output) if output else None
    path = Path(source)
    if path.is_dir():
        from prunekit.pruning.checkpoint import verify_checkpoint

        if expected_sha256 is not None:
            verify_checkpoint(path, expected_sha256)
        cfg = config_for_checkpoint(path, overrides=overrides, trust_remote_code=trust_remote_code)
        out = out or path.parent / f"estimate-{path.name}.json"
    else:
        cfg = load_config(path, overrides)
    return run_estimate_command(cfg, out)


@contextmanager
def _progress_lines(main: bool) -> Iterator[None]:
    """One ``[prunekit]`` line per estimator on stderr (main process), for this command only.

    The handler is removed afterwards: a handler left on the ``prunekit`` logger would outlive the
    command and write to whatever stderr it captured (or double every line of a later run).
    """
    logger = logging.getLogger("prunekit")
    if not main or logger.handlers:  # a caller (e.g. the pipeline) already shows progress
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[prunekit] %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _run(cfg: Any, output: Any | None, accelerator: Any) -> dict[str, Any]:
    from pathlib import Path

    from prunekit.atomic import write_json
    from prunekit.pipeline import output_folder
    from prunekit.pruning.checkpoint import load
    from prunekit.structure import find_groups
    from prunekit.task import Task
    from prunekit.theory.estimate import estimate

    task = Task(cfg)
    out = Path(output) if output is not None else output_folder(cfg, None)
    path = out if out.suffix == ".json" else out / "estimate.json"
    dense_dir = output_folder(cfg, None if out.suffix == ".json" else out) / "dense"
    if cfg.model.checkpoint:
        model, source = task.build_dense(), f"checkpoint {cfg.model.checkpoint}"
    elif (dense_dir / "prunekit.json").is_file():
        model = load(dense_dir, trust_remote_code=cfg.model.trust_remote_code)[0]
        source = f"dense checkpoint {dense_dir}"
    else:
        model = task.build_dense()
        source = "built from the config, untrained"
        if cfg.train.epochs > 0:
            task.train(model, cfg.train, accelerator, seed=cfg.seed, desc="dense")
            source = f"built from the config and trained for {cfg.train.epochs} epochs (not saved)"
    model.to(accelerator.device)
    groups = find_groups(
        model, move_to(task.example, accelerator.device), ignore=cfg.prune.ignore, experts=cfg.prune.experts
    )
    est = estimate(model, task.splits, cfg.estimate, groups=groups, accelerator=accelerator, seed=cfg.seed)
    result = est.to_dict() | {"model_source": source, "config_name": cfg.name}
    if accelerator.is_main_process:
        print(f"estimates for '{cfg.name}' ({source}):")
        print(format_summary(est))
        write_json(path, result)
        print(f"wrote {path}")
    accelerator.wait_for_everyone()
    return result
