"""Run the reliability suite (tests/reliability/) and write results/reliability.md.

Each test case is one hostile or careless input (a config, a checkpoint, two runs into one folder, a
kill -9, a two-process launch); "handled cleanly" means the test passed: the input ended in one error
line with exit code 2, or in the same result as a clean run. Nothing is timed in the tests; the
suite's wall time is reported here.

    .venv/bin/python experiments/reliability_report.py            # the whole suite, slow tests included
    .venv/bin/python experiments/reliability_report.py -- -m "not slow"   # extra pytest arguments
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/reliability"
# file-name prefix → group of results/reliability.md (the grouping)
GROUPS = [
    ("test_config", "configs"),
    ("test_data", "configs"),
    ("test_checkpoint", "checkpoints"),
    ("test_concurrency", "concurrency"),
    ("test_kill", "kill/resume"),
    ("test_multiprocess", "multi-process"),
    ("test_outputs", "output files"),
]
WHAT = {
    "configs": "bad values (inf / nan, seed range, bounds, string booleans), unsafe names, alias bombs "
    "(one under a 2 GiB address-space cap), empty / binary / non-UTF-8 files, output paths that are "
    "files or read-only, `--overwrite` with each bad value (the run folder byte-identical after), "
    "a folder prunekit did not make, diverged training, bad CSVs, the CLI's exit codes, "
    "`hypothesis` fuzz of values and of raw YAML bytes",
    "checkpoints": "tampered prunekit.json / weights / hashes, remote-code attempts, schema fuzz (H1's tests)",
    "concurrency": "two real `prunekit run` processes into one folder; stale temp folders removed",
    "kill/resume": "`kill -9` of a real run at three moments (one with a half-written checkpoint temp "
    "folder); the resumed report equals an uninterrupted run's",
    "multi-process": "the same config on 1 process and on 2 real gloo DDP ranks (same batches, "
    "steps and losses); a global batch that does not divide",
    "output files": "file / folder modes follow the umask (022 and 027), checkpoints included",
}
ORDER = ["configs", "checkpoints", "concurrency", "kill/resume", "multi-process", "output files", "other"]


def group_of(module: str) -> str:
    name = module.rsplit(".", 1)[-1]
    return next((g for prefix, g in GROUPS if name.startswith(prefix)), "other")


def outcome(case: ET.Element) -> tuple[str, str]:
    for tag, label in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        node = case.find(tag)
        if node is not None:
            message = " ".join((node.get("message") or "").split())
            return label, message[:160]
    return "passed", ""


def run_suite(extra: list[str]) -> tuple[list[dict], float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "pytest", SUITE, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd + extra, cwd=ROOT, env=env)
        wall = time.perf_counter() - t0
        cases = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            status, message = outcome(case)
            module = case.get("classname", "")
            cases.append(
                {
                    "group": group_of(module),
                    "file": module.rsplit(".", 1)[-1] + ".py",
                    "name": case.get("name", ""),
                    "status": status,
                    "message": message,
                    "seconds": float(case.get("time", 0.0)),
                }
            )
    return cases, wall, proc.returncode


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def to_markdown(cases: list[dict], wall: float, extra: list[str]) -> str:
    by_group: dict[str, list[dict]] = defaultdict(list)
    for c in cases:
        by_group[c["group"]].append(c)
    command = "python experiments/reliability_report.py" + (" -- " + " ".join(extra) if extra else "")
    clean = sum(c["status"] == "passed" for c in cases)
    lines = [
        "# Reliability: hostile and careless inputs",
        "",
        f"At commit {commit()}: **{clean} of {len(cases)} cases handled cleanly** "
        f"(suite wall time {wall:.0f} s on this machine).",
        "",
        f"Reproduce: `{command}` (runs `pytest {SUITE}` with a junit report and rewrites this file).",
        "",
        "Handled cleanly = the test passed: the input ended in one `prunekit: error:` line with exit "
        "code 2 (or a one-line exception from the API), with nothing written or deleted, or in the "
        "same report as a clean run. A `hypothesis` fuzz test is one case of many drawn examples.",
        "",
        "| group | cases | handled cleanly | failed | skipped |",
        "|---|---:|---:|---:|---:|",
    ]
    for g in ORDER:
        cs = by_group.get(g, [])
        if not cs:
            continue
        n = {s: sum(c["status"] == s for c in cs) for s in ("passed", "failed", "error", "skipped")}
        lines.append(f"| {g} | {len(cs)} | {n['passed']} | {n['failed'] + n['error']} | {n['skipped']} |")
    lines.append(
        f"| **all** | {len(cases)} | {clean} | "
        f"{sum(c['status'] in ('failed', 'error') for c in cases)} | "
        f"{sum(c['status'] == 'skipped' for c in cases)} |"
    )
    for g in ORDER:
        cs = by_group.get(g, [])
        if not cs:
            continue
        lines += ["", f"## {g}", "", WHAT.get(g, "") + ".", "", "| file | case | result |", "|---|---|---|"]
        for c in cs:
            result = c["status"] + (f": {c['message']}" if c["message"] else "")
            name = c["name"].replace("|", "/")
            lines.append(f"| {c['file']} | `{name}` | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "results" / "reliability.md"))
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    cases, wall, code = run_suite(args.pytest_args)
    Path(args.out).write_text(to_markdown(cases, wall, args.pytest_args))
    clean = sum(c["status"] == "passed" for c in cases)
    print(f"{clean}/{len(cases)} handled cleanly in {wall:.0f} s; wrote {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
