"""Wall-clock latency of a forward pass (eval mode, no grad, a fixed number of CPU threads)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from prunekit.batch import Inputs, device_of, logits_of
from prunekit.metrics.macs import checked_inputs


def measure_latency(
    model: nn.Module, example_inputs: Inputs, repeats: int = 30, warmup: int = 5, threads: int = 1
) -> dict[str, float | int]:
    """Time ``repeats`` forward passes after ``warmup`` untimed ones; returns milliseconds.

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
        "median_ms": float(np.median(t)),
        "p10_ms": float(np.percentile(t, 10)),
        "p90_ms": float(np.percentile(t, 90)),
        "repeats": repeats,
        "threads": threads,
    }
