"""The coverage matrix as a table: results/coverage.md and results/coverage.json (issue 12, Measure).

Every case of tests/coverage_cases.CASES (tiny HF configs with random weights, offline, and the non-HF
patterns of prunekit.testing.patterns) goes through coverage_cases.check: groups found, 30 % and 50 %
random prunes against the zero-masked dense reference (max relative error over all outputs), save +
prunekit.load bit-identical, from_pretrained, and the seconds find_groups took (one thread).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python experiments/coverage.py [--seed 0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from coverage_cases import CASES, EXACT_TOL, check  # noqa: E402

COMMAND = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python experiments/coverage.py"


def _row(r: dict) -> str:
    if r.get("error"):
        return f"| {r['name']} | CRASH: {r['error'][:120]} | | | | |"
    if r["refused"]:
        return f"| {r['name']} | refused: {r['refused'][:140]} | | | | {r['find_s']:.3f} |"
    errs = [f"{e:.1e}" for e in r["exact"].values()]
    ok = all(e < EXACT_TOL for e in r["exact"].values())
    exact = f"{'yes' if ok else 'NO'} ({' / '.join(errs)})"
    if r.get("documented") and not ok:  # the documented difference, within its own tolerance
        within = all(e < r["tol"] for e in r["exact"].values())
        exact = f"{'documented' if within else 'NO'}: {r['documented']} ({' / '.join(errs)}; < {r['tol']:g})"
    groups = f"{r['groups']} ({', '.join(r['kinds'])}; {r['units']} units)"
    reload = f"{'yes' if r['reload'] else 'NO'} ({r['reload_class']})"
    fp = r["from_pretrained"] if r["from_pretrained"] is not None else "n/a (not HF)"
    return f"| {r['name']} | {groups} | {exact} | {reload} | {fp} | {r['find_s']:.3f} |"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "torch-pruning": version("torch-pruning"),
        "python": platform.python_version(),
    }


def write(results: list[dict], seconds: float, out: Path) -> None:
    versions = _versions()
    hf = [r for r in results if r["hf"]]
    exact = [r for r in results if not r.get("refused") and not r.get("error")]
    sdpa = sum(r["name"].endswith("_sdpa") for r in hf)
    fp = [r.get("from_pretrained") for r in hf]
    n_exact = sum(all(e < EXACT_TOL for e in r["exact"].values()) for r in exact)
    documented = [
        r["name"]
        for r in exact
        if r.get("documented") and not all(e < EXACT_TOL for e in r["exact"].values())
    ]
    lines = [
        "# Coverage matrix (issue 12)",
        "",
        f"Made by `{COMMAND}` in {seconds:.0f} s; versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        f"{len(results)} cases ({len(hf) - sdpa} HF architectures from tiny configs with random weights and "
        f"randomised norms, {sdpa} of them once more with the default sdpa attention, "
        f"{len(results) - len(hf)} non-HF patterns). Groups found for {len(exact)}; "
        f"{n_exact} of them prune exactly (max relative error over all outputs < {EXACT_TOL:g}) at both 30 % and "
        "50 % of every group's units removed at random, against the dense model whose removed units are "
        f"zeroed (tests/coverage_cases.py); the other {len(documented)} ({', '.join(documented)}) show the one "
        "documented difference, a norm over all heads together (RMSNorm: its kept weights are rescaled by "
        "sqrt(all / kept), exact but for eps, which acts as eps x kept / all and dominates at the tiny "
        "models' init, see olmo2 vs olmo2_eps0; LayerNorm: its mean and variance over the kept rows "
        "differ), each within its own stated tolerance. Reload: prunekit.save + prunekit.load of the 50 % prune, "
        "state and outputs bit-identical, same class. from_pretrained: `type(model).from_pretrained(folder)` "
        "gives the same outputs (exact), or refuses because config.json cannot express the prune (refused: "
        "the family derives a width from others, e.g. BERT's head size = hidden / heads, or the config has no "
        "field for a pruned width; groups of one size keep one count, so layers stay identical). "
        "Seconds: find_groups once, one CPU thread, on a shared 2-core machine. "
        f"from_pretrained exact for {fp.count('exact')} HF cases, refused (loudly) for {fp.count('refused')}; "
        f"the caller's HF config object unchanged by an in-place prune in "
        f"{sum(r.get('config_untouched') is True for r in hf)} of {sum(not r.get('refused') for r in hf)}.",
        "",
        "| architecture | groups found | exact (30 % / 50 % rel. err.) | reload | from_pretrained | find s |",
        "|---|---|---|---|---|---|",
        *(_row(r) for r in results),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    payload = {"command": COMMAND, "seconds": seconds, "versions": versions, "tolerance": EXACT_TOL}
    out.with_suffix(".json").write_text(json.dumps(payload | {"results": results}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    parser.add_argument("--out", default=str(ROOT / "results" / "coverage"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    start, results = time.perf_counter(), []
    for i, case in enumerate(cases):
        try:
            r = check(case, seed=args.seed)
        except Exception as err:  # reported in the table, not hidden
            r = {"name": case.name, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
        results.append(r | {"hf": case.hf, "documented": case.documented, "tol": case.tol})
        print(f"[{i + 1}/{len(cases)}] {case.name}: {_row(results[-1])}", flush=True)
    write(results, time.perf_counter() - start, Path(args.out))


if __name__ == "__main__":
    main()
