"""Benchmark: what issue 30's safety checks cost on the results store, each against a reference run in this process.

(a) `read_store` of N synthetic cell files (the shape of benchmarks/report.py) with the duplicate-`cell_id` check, and
    with that check replaced by a no-op (the reader before issue 30);
(b) writing N cell files through `CellStore.write` (fcntl lock, re-read and merge of the stored cell, link checks)
    against a plain `oodml.io.atomic_write` of the same text.
Prints cpu and wall seconds, the ratios (checked / reference) and the load average.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/safe_store.py [--cells 10000] [--writes 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_store  # noqa: E402
from oodml.io import atomic_write  # noqa: E402
from oodml.report import store as report_store  # noqa: E402
from oodml.runner.store import CellStore, dumps_cell  # noqa: E402


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """Best (cpu, wall) seconds of `repeats` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.process_time() - c, time.perf_counter() - w))
    return best


def main() -> None:
    """Run both comparisons and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10_000)
    ap.add_argument("--writes", type=int, default=2_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        write_store(results, args.cells, all_k=True)
        checked = timed(lambda: report_store.read_store(results))
        digest = report_store._values_digest
        report_store._values_digest = lambda cell: 0  # type: ignore[assignment]  # every copy "identical"...
        repeats = report_store._Repeats.first_copies
        report_store._Repeats.first_copies = lambda self, files, cells: list(zip(files, cells))  # type: ignore
        try:
            plain = timed(lambda: report_store.read_store(results))
        finally:
            report_store._values_digest, report_store._Repeats.first_copies = digest, repeats  # type: ignore
        print(f"read_store, {args.cells:,} cells: with the duplicate check {checked[0]:.2f} cpu s ({checked[1]:.2f} "
              f"wall), without {plain[0]:.2f} cpu s ({plain[1]:.2f} wall); ratio {checked[0] / plain[0]:.3f}")

        payloads = []
        for p in sorted((results / "cells").glob("*.json"))[:args.writes]:
            cell = json.loads(p.read_text())
            cell["provenance"] = {"libraries": {}}
            payloads.append(cell)
        store = CellStore(Path(tmp) / "locked")
        plain_dir = Path(tmp) / "plain" / "cells"
        plain_dir.mkdir(parents=True)

        def locked() -> None:
            for c in payloads:
                store.write(c)

        def unlocked() -> None:
            for c in payloads:
                with atomic_write(plain_dir / f"{c['cell_id']}.json") as f:
                    f.write(dumps_cell(c))

        w_locked, w_plain = timed(locked), timed(unlocked)
        print(f"write, {len(payloads):,} cell files: CellStore.write (lock, merge, link checks) {w_locked[0]:.2f} "
              f"cpu s ({w_locked[1]:.2f} wall), plain atomic_write {w_plain[0]:.2f} cpu s ({w_plain[1]:.2f} wall); ratio "
              f"{w_locked[0] / w_plain[0]:.3f}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
