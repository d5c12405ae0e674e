"""Benchmark: aggregate a store of 100,000 synthetic cell files (issue 8, item 7).

Writes the cell files (Runner contract: `<results>/cells/<cell_id>.json`) into a temporary folder, then times
(a) the reference reader, written the obvious way (`json.load` per file, a DataFrame from a list of row dicts),
(b) `oodml.report.read_store` (one `json.loads` over all files, C-level row gathering, vectorised checks),
(c) the aggregation of every table, (d) the whole `build_report` (CSVs with every row, plots, report.md/html).
Prints the figures and the ratio of (b) to (a) measured in this process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report.py [--cells 100000] [--keep DIR]

Wall times on a shared machine swing with its load; the cpu seconds (process time) and the ratio are steadier.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from oodml.progress import log
from oodml.report import aggregate, build_report, read_store
from oodml.schema import ROW_COLUMNS

T = TypeVar("T")
KS = (0, 2, 5, 10)
LEVELS = tuple(range(1, 9))
FIDS = {lv: 8.0 + 15.0 * (lv - 1) for lv in LEVELS}


def write_store(results: Path, n_cells: int, n_methods: int = 20, seed: int = 0) -> int:
    """`n_cells` cell files over methods x 8 levels x k in (0,2,5,10) x as many seeds as needed; returns rows."""
    rng = np.random.default_rng(seed)
    cells = results / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    config = json.dumps({"dataset": "synthetic", "regime": "head", "seeds": "0..2", "ks": "0,2,5,10",
                         "method_params": {"margin": 0.2, "lr": 1e-4, "iterations": 1000}})
    n_rows = 0
    per_seed = n_methods * len(LEVELS) * len(KS)
    for i in range(n_cells):
        seed, rest = divmod(i, per_seed)
        method, rest = divmod(rest, len(LEVELS) * len(KS))
        level, k = LEVELS[rest // len(KS)], KS[rest % len(KS)]
        name = f"method{method:02d}"
        cid = hashlib.sha1(f"{name}|{level}|{k}|{seed}".encode()).hexdigest()[:16]
        metrics = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r"] + (["accuracy"] if k else [])
        values = rng.uniform(0.05, 0.95, size=len(metrics))
        rows = [dict(zip(ROW_COLUMNS, (
            1, "0.1.0", "abc1234", "2026-11-23T13:00:00Z", cid, "synthetic", "efficientnet_lite0", "f" * 64,
            name, ("adapted", "dml", "fewshot", "transfer")[method % 4], '{"margin": 0.2}',
            level, FIDS[level], 100, 100, f"h{level}", k, 0 if k == 0 else 10, seed,
            m, float(v), 0.01, 2900, 8, "faiss", "ok", "", 1.25, 512.0, "cpu", "c" * 40, config)))
            for m, v in zip(metrics, values)]
        n_rows += len(rows)
        doc = {"cell_id": cid, "status": "ok", "error": "", "config": {"method": name, "split_level": level},
               "rows": rows, "episodes": []}
        (cells / f"{cid}.json").write_text(json.dumps(doc))
    return n_rows


def reference_read(results: Path) -> pd.DataFrame:
    """The obvious reader: json.load per file, one dict per row, a DataFrame from the list."""
    rows: list[dict[str, object]] = []
    for f in sorted((results / "cells").glob("*.json")):
        with f.open() as fh:
            rows.extend(json.load(fh)["rows"])
    return pd.DataFrame(rows)


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, tuple[float, float]]:
    """`fn(*args)` and its (wall, cpu) seconds."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, (time.perf_counter() - w, time.process_time() - c)


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the store here and keep it (reused when complete)")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="oodml-bench-report-"))
    results = tmp / "results"
    try:
        existing = len(list((results / "cells").glob("*.json"))) if (results / "cells").is_dir() else 0
        if existing != args.cells:
            shutil.rmtree(results, ignore_errors=True)
            t = time.perf_counter()
            write_store(results, args.cells)
            log(f"wrote {args.cells} cell files in {time.perf_counter() - t:.1f}s")
        ref, t_ref = timed(reference_read, results)
        store, t_read = timed(read_store, results)
        assert len(store.rows) == len(ref)
        del ref
        _, t_agg = timed(aggregate, store, "synthetic", None)
        paths, t_all = timed(lambda: build_report(results=results, metric=None))
        print(f"cells                          {args.cells}")
        print(f"rows                           {len(store.rows)}")
        print("                               wall s   cpu s")
        print(f"reference reader (json.load)   {t_ref[0]:7.2f} {t_ref[1]:7.2f}")
        print(f"read_store (validated)         {t_read[0]:7.2f} {t_read[1]:7.2f}   cpu ratio to reference "
              f"{t_read[1] / t_ref[1]:.2f}")
        print(f"aggregate (all tables)         {t_agg[0]:7.2f} {t_agg[1]:7.2f}")
        print(f"build_report ({len(paths)} files)        {t_all[0]:7.2f} {t_all[1]:7.2f}")
        print(f"all.csv size                   {(results / 'synthetic' / 'all.csv').stat().st_size / 1e6:.0f} MB")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
