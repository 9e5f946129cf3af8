"""Wall-clock latency of a forward pass (eval mode, no grad, a fixed number of CPU threads).

Only medians are used to compare models; the spread (interquartile range over the median, per pass)
says how far a median can be trusted on a shared machine: :func:`check_stable` refuses a measurement
whose median is uncertain by more than :data:`MEDIAN_ERROR_LIMIT` (2 %).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from prunekit.batch import Inputs, device_of, logits_of
from prunekit.metrics.macs import checked_inputs

# How far the median of a measurement may be trusted: its relative standard error, about
# 0.93 * (IQR / median) / sqrt(repeats) (the median of normal errors; IQR = 1.35 sigma). Above 2 %, a
# 5 % latency tolerance is inside the noise (two standard errors), so a latency target is refused.
MEDIAN_ERROR_LIMIT = 0.02


def spread_of(times_ms: object) -> dict[str, float]:
    """Median, quartiles and relative spread (IQR / median) of per-pass times in milliseconds."""
    t = np.asarray(times_ms, dtype=float)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"latency times must be a non-empty list of finite times >= 0, got {t.tolist()!r}")
    median = float(np.median(t))
    p25, p75 = float(np.percentile(t, 25)), float(np.percentile(t, 75))
    return {
        "median_ms": median,
        "p25_ms": p25,
        "p75_ms": p75,
        "spread": (p75 - p25) / median if median > 0 else 0.0,
    }


def median_error(stats: dict) -> float:
    """The relative standard error of a measurement's median, from its spread and repeat count."""
    return 0.93 * float(stats["spread"]) / math.sqrt(int(stats["repeats"]))


def check_stable(stats: dict, limit: float = MEDIAN_ERROR_LIMIT, what: str = "the model") -> None:
    """ValueError (one line, with the spread) when the median of ``stats`` (from :func:`measure_latency`)
    is not known to within ``limit`` (:func:`median_error`): a latency target cannot be planned on it."""
    if not limit > 0:
        raise ValueError(f"the latency error limit must be > 0, got {limit!r}")
    err = median_error(stats)
    if err > limit:
        need = math.ceil((0.93 * float(stats["spread"]) / limit) ** 2)
        raise ValueError(
            f"latency of {what} cannot be measured stably: median {stats['median_ms']:.3f} ms, spread "
            f"(IQR / median) {stats['spread']:.2f} over {stats['repeats']} repeats at {stats['threads']} "
            f"thread(s), so the median is uncertain by {err:.1%} (limit {limit:.0%}); raise "
            f"evaluate.latency_repeats to {need} or more, or measure on a quieter machine"
        )


def measure_latency(
    model: nn.Module, example_inputs: Inputs, repeats: int = 30, warmup: int = 5, threads: int = 1
) -> dict[str, float | int]:
    """Time ``repeats`` forward passes after ``warmup`` untimed ones; returns milliseconds: the median,
    10th / 25th / 75th / 90th percentiles and ``spread`` (IQR / median, see :func:`spread_of`).

    ``threads`` sets ``torch.set_num_threads`` for the measurement only (restored afterwards), because
    latency on a shared machine is only comparable at a fixed thread count. The model's train/eval mode
    is restored too. On CUDA each pass is synchronised before the clock stops.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"latency repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"latency warmup must be a non-negative integer, got {warmup!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"latency threads must be a positive integer, got {threads!r}")
    device = device_of(model)
    inputs, _ = checked_inputs(model, example_inputs)  # on the model's device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    old_threads, was_training = torch.get_num_threads(), model.training
    times_ms: list[float] = []
    torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                logits_of(model, inputs)
                sync()
                if i >= warmup:
                    times_ms.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    t = np.asarray(times_ms)
    return {
        **spread_of(t),
        "p10_ms": float(np.percentile(t, 10)),
        "p90_ms": float(np.percentile(t, 90)),
        "repeats": repeats,
        "threads": threads,
    }
