"""Size and speed metrics: parameter counts, MACs (hook-based, subclass-aware), latency."""

from __future__ import annotations

from prunekit.metrics.latency import measure_latency
from prunekit.metrics.macs import count_macs, mac_breakdown
from prunekit.metrics.params import count_params

__all__ = ["count_macs", "count_params", "mac_breakdown", "measure_latency"]
