"""CPU latency of one convolution against its output channel count: why latency targets step.

The quickstart cnn1d's middle layer (Conv1d(32 -> c, kernel 5, stride 2) on a batch of 256 signals of
length 40) is timed for every c, one thread, the median of ``repeats`` passes after a warm-up, in
``rounds`` interleaved sweeps (the median over rounds is reported, so a burst of load on the shared
machine moves one round, not the result). A latency that is a staircase in c (kernels work on blocks
of channels and switch algorithms at some widths) means some latency targets have no width within
5 %: see prunekit/planner/latency.py's step warning.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/conv_channel_latency.py

Writes results/conv_channel_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def median_ms(conv: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(5):
            conv(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, nargs=2, default=[8, 72], help="first and last c")
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(256, 32, 40)
    widths = list(range(args.channels[0], args.channels[1] + 1))
    convs = {c: torch.nn.Conv1d(32, c, 5, stride=2, padding=2, bias=False).eval() for c in widths}
    rounds: dict[int, list[float]] = {c: [] for c in widths}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for c in widths:
            rounds[c].append(median_ms(convs[c], x, args.repeats))
        print(f"round {r + 1}/{args.rounds} done in {time.perf_counter() - t0:.0f} s", flush=True)
    ms = {c: statistics.median(v) for c, v in rounds.items()}
    out = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python experiments/conv_channel_latency.py "
        + " ".join(sys.argv[1:]),
        "layer": "Conv1d(32 -> c, kernel 5, stride 2, padding 2, no bias), input (256, 32, 40)",
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg()[0],
        "median_ms": ms,
        "rounds_ms": rounds,
    }
    (ROOT / "results" / "conv_channel_latency.json").write_text(json.dumps(out, indent=1) + "\n")
    (ROOT / "results" / "conv_channel_latency.md").write_text(report(out))
    steps = [c for c in widths[1:] if ms[c] > 1.15 * ms[c - 1]]
    print(f"wrote results/conv_channel_latency.md: latency jumps > 15 % at c = {steps}")


def report(out: dict) -> str:
    ms = {int(c): v for c, v in out["median_ms"].items()}
    lines = [
        "# CPU latency of one convolution against its output channels",
        "",
        f"`{out['command']}`; {out['layer']}; {out['threads']} thread, torch {out['torch']}, "
        f"{out['machine']['cpus']} CPUs (shared), load average {out['load_average']:.1f} at the end. "
        "Median of the per-round medians.",
        "",
        "| c | ms | c | ms | c | ms | c | ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cs = sorted(ms)
    for i in range(0, len(cs), 4):
        cells = [f"{c} | {ms[c]:.3f}" for c in cs[i : i + 4]]
        lines.append("| " + " | ".join(cells) + " |")
    steps = [(c, ms[c - 1], ms[c]) for c in cs[1:] if ms[c] > 1.15 * ms[c - 1]]
    lines += [
        "",
        "Jumps of more than 15 % from c − 1 to c: "
        + ", ".join(f"{c} ({a:.2f} → {b:.2f} ms)" for c, a, b in steps),
    ]
    lines += [
        "",
        "Between two steps the latency is flat while the MACs grow linearly, so a latency target that "
        "falls inside a jump has no width within 5 %; a planner on MACs moves through such a jump in one "
        "channel (see results/latency_target_run4.md).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
