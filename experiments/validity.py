"""The validity study's runs and their committed results (results/validity/).

    # run (or resume) one task's study; the work folder keeps checkpoints and per-candidate JSON
    python experiments/validity.py run configs/validity_mnist1d.yaml runs/validity_mnist1d
    # report what is finished (also for a study stopped early) and copy it to results/validity/<task>/
    python experiments/validity.py report configs/validity_mnist1d.yaml runs/validity_mnist1d results/validity/mnist1d
    # fit the calibrated bound on one task, check it on the other
    python experiments/validity.py calibrate results/validity/mnist1d results/validity/fashion results/validity

Run with OMP_NUM_THREADS=1 on a shared CPU. ``prunekit validate CONFIG`` is the same study for a user's model.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def run(config: str, folder: str) -> None:
    from prunekit.studies.config import load_study_config
    from prunekit.studies.validity import run_study

    cfg, v = load_study_config(config)
    run_study(cfg, v, folder, command=f"python experiments/validity.py run {config} {folder}")


def report(config: str, folder: str, results: str) -> None:
    from prunekit.studies.config import load_study_config
    from prunekit.studies.validity import run_study

    cfg, v = load_study_config(config)
    cmd = f"python experiments/validity.py run {config} {folder} && python experiments/validity.py report {config} {folder} {results}"
    rep = run_study(cfg, v, folder, command=cmd, report_only=True)
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    for name in (
        "report.json",
        "report.md",
        "candidates.json",
        "best_predictor.json",
        "tau.png",
        "predictor_vs_accuracy.png",
    ):
        shutil.copy2(Path(folder) / name, out / name)
    for b in v.budgets:
        shutil.copy2(Path(folder) / f"budget-{b:g}" / "plans.json", out / f"plans-{b:g}.json")
    print(json.dumps(rep["verdict"], indent=1))


def calibrate(task_a: str, task_b: str, results: str) -> None:
    from prunekit.atomic import write_json, write_text
    from prunekit.studies.calibration import cross_task, markdown

    recs_a = json.loads((Path(task_a) / "candidates.json").read_text())
    recs_b = json.loads((Path(task_b) / "candidates.json").read_text())
    res = cross_task(recs_a, recs_b, (Path(task_a).name, Path(task_b).name))
    res["command"] = f"python experiments/validity.py calibrate {task_a} {task_b} {results}"
    write_json(Path(results) / "calibration.json", res)
    write_text(Path(results) / "calibration.md", markdown(res) + f"\nMade by: `{res['command']}`\n")
    print(markdown(res))


if __name__ == "__main__":
    {"run": run, "report": report, "calibrate": calibrate}[sys.argv[1]](*sys.argv[2:])
