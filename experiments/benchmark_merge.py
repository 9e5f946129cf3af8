"""How this session's runs went into results/benchmark.json (results/benchmark_commands.md, 2026-12-06).

    python experiments/benchmark_merge.py mnist1d fashion_resnet20,mnist1d_large \\
        /tmp/h4/mnist1d.json /tmp/h4/fashion.json /tmp/h4/fashion_b.json /tmp/h4/mnist1d_large.json

DROP: tasks whose earlier rows are superseded (re-run whole); MOVE: tasks whose earlier rows (an earlier
dense model) move to ``<task>_prev_dense``; then the new runs' JSON files. Earlier rows of the theory
planners were made with OBD / Hessian unit scores and no band: they are renamed ``<method>_hessian``. New
rows are renamed from the names they ran under to those of experiments/benchmark_methods.py. Apply to the
JSON as committed before the merge (it renames, so it is not idempotent); then
``python experiments/benchmark.py --report-only``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "results" / "benchmark.json"
# run-time name -> the name in the JSON (l2 units became the default, then band 2)
RENAMED = {
    "theory_validated_l2": "theory_validated_band0",
    "theory_validated": "theory_validated_band0",
    "theory_validated_fashion_l2": "theory_validated_fashion_band0",
    "theory_validated_fashion": "theory_validated_fashion_band0",
    "theory_validated_band2": "theory_validated",
    "theory_validated_fashion_band2": "theory_validated_fashion",
    "loss_sensitivity_l2": "loss_sensitivity",
}
HESSIAN = (
    "theory",
    "theory_bound",
    "theory_validated",
    "theory_validated_fashion",
    "loss_sensitivity",
    "theory_curves16",
    "loss_curves16",
    "theory_probe16",
    "theory_validated_constant_gap",
)


def _key(r: dict) -> tuple:
    return (r["task"], r["method"], r["level"], r["seed"])


def main() -> None:
    drop, move = (set(filter(None, a.split(","))) for a in sys.argv[1:3])
    data = json.loads(OUT.read_text())
    new = [
        {**r, "method": RENAMED.get(r["method"], r["method"])}
        for p in sys.argv[3:]
        for r in json.loads(Path(p).read_text())["runs"]
    ]
    new = list({_key(r): r for r in new}.values())  # a row in two files: the last one
    old = []
    for r in data["runs"]:
        if r["task"] in drop:
            continue
        r = {**r, "method": r["method"] + "_hessian" if r["method"] in HESSIAN else r["method"]}
        old.append({**r, "task": r["task"] + "_prev_dense"} if r["task"] in move else r)
    keys = {_key(r) for r in new}
    data["runs"] = [r for r in old if _key(r) not in keys] + new
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(OUT)
    print(f"[merge] {len(data['runs'])} rows -> {OUT}")


if __name__ == "__main__":
    main()
