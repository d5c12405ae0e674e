"""The reporter (docs/formats.md): leaderboards, degradation curves and report.md/html from the result store.

It reads only `<results>/cells/*.json` and computes no metric; it groups, averages and plots what the runner stored.
"""

from __future__ import annotations

from oodml.report.build import aggregate, build_report, write_dataset
from oodml.report.store import Store, read_store

__all__ = ["Store", "aggregate", "build_report", "read_store", "write_dataset"]
