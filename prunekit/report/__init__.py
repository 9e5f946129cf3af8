"""Reports of a run: ``report.json`` (the data), ``report.md`` (a table) and a plot."""

from prunekit.report.build import build_report
from prunekit.report.write import write_report

__all__ = ["build_report", "write_report"]
