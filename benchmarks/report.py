"""Benchmark: aggregate a store of 100,000 synthetic cell files (issue 8, item 7), with and without intervals
(issue 17, item 8).

Writes the cell files (Runner contract: `<results>/cells/<cell_id>.json`, with per-unit values: 10 episodes per
k-shot cell, `--classes` test classes per zero-shot cell) into a temporary folder, then times
(a) the reference reader, written the obvious way (`json.load` per file, a DataFrame from a list of row dicts),
(b) `oodml.report.read_store` (chunked orjson parsing into columnar arrays, C-level row gathering, vectorised checks),
(c) the aggregation of every table, (d) the whole `build_report` without intervals (`--bootstrap 0`: CSVs with
every row and unit row, plots, report.md/html) and (e) with intervals (`--bootstrap 2000`: hierarchical bootstrap
of every leaderboard value, paired tests against rank 1, gains with intervals).
Prints the figures, the ratio of (b) to (a) and the ratio of (e) to (d), all measured in this process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report.py [--cells 100000] [--keep DIR]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report.py --study   # the 336-cell study's shape: 14 methods x
                                                                       # 8 levels x 3 seeds, every k in each cell
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/report.py --results DIR   # an existing results folder

Wall times on a shared machine swing with its load; the cpu seconds (process time) and the ratios are steadier.
Peak RSS (`resource.getrusage`) is printed after each step; the reference reader runs last because it holds every
row dict of the store at once. `read_store` parses the files in chunks into columnar arrays, so its memory grows
with the store's values (about 60 bytes per unit value), not with its parsed JSON. Measured 2026-11-29 on the shared
2-core machine under load (cpu s; wall s swung 3-8x with the load): 100,000 cells (7.6M unit values) read_store 32 s,
build_report 143 s without intervals and 150 s with (ratio 1.05), peak RSS 2.7 GB after read_store and 4.1 GB over
the whole run (before: the reader passed 9.8 GB and was stopped); 10,000 cells: ratio 1.43, peak 0.8 GB; the
336-cell CUB-subset study: ratio 1.17, peak 0.34 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pandas as pd

from oodml.progress import log
from oodml.report import aggregate, build_report, read_store
from oodml.schema import CLASS_UNIT_COLUMNS, EPISODE_UNIT_COLUMNS, ROW_COLUMNS, unit_table

T = TypeVar("T")
KS = (0, 2, 5, 10)
LEVELS = tuple(range(1, 9))
FIDS = {lv: 8.0 + 15.0 * (lv - 1) for lv in LEVELS}


EPISODES = 10
ZERO_SHOT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


def write_store(results: Path, n_cells: int, n_methods: int = 20, seed: int = 0, n_classes: int = 25,
                all_k: bool = False) -> int:
    """`n_cells` cell files over methods x 8 levels x k in (0,2,5,10) x as many seeds as needed; returns rows.

    A cell holds one k (`all_k`: every k, as the runner's cells do), its rows, and per-unit values: 10 episodes per
    k > 0 (the row value is their mean) and `n_classes` test classes at k = 0 (the row value is their
    query-weighted mean). Methods `method01`, `method05`, ... are `adapted_` versions of `method00`, `method04`...
    so that the report also computes few-shot gains.
    """
    rng = np.random.default_rng(seed)
    cells = results / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    config = json.dumps({"dataset": "synthetic", "regime": "head", "seeds": "0..2", "ks": "0,2,5,10",
                         "method_params": {"margin": 0.2, "lr": 1e-4, "iterations": 1000}})
    n_rows = 0
    ks_per_cell = len(KS) if all_k else 1
    per_seed = n_methods * len(LEVELS) * len(KS) // ks_per_cell
    class_names = [f"{i:03d}.class" for i in range(n_classes)]
    for i in range(n_cells):
        seed, rest = divmod(i, per_seed)
        method, rest = divmod(rest, len(LEVELS) * len(KS) // ks_per_cell)
        level, ks = (LEVELS[rest], KS) if all_k else (LEVELS[rest // len(KS)], (KS[rest % len(KS)],))
        name = (f"adapted_method{method - 1:02d}" if method % 4 == 1 else f"method{method:02d}")
        family = ("dml", "adapted", "fewshot", "transfer")[method % 4]
        cid = hashlib.sha1(f"{name}|{level}|{ks}|{seed}".encode()).hexdigest()[:16]
        rows, episodes, classes = [], [], []
        for k in ks:
            metrics = ZERO_SHOT_METRICS + (("accuracy",) if k else ())
            if k:
                unit_values = rng.uniform(0.05, 0.95, size=(len(metrics), EPISODES))
                values = unit_values.mean(axis=1)
                episodes += [{"variant": "", "k": k, "episode": e, "metric": m, "value": float(v)}
                             for m, row in zip(metrics, unit_values) for e, v in enumerate(row)]
            else:
                unit_values = rng.uniform(0.05, 0.95, size=(len(metrics), n_classes))
                n_q = rng.integers(20, 40, size=n_classes)
                values = unit_values @ n_q / n_q.sum()
                classes += [{"variant": "", "k": 0, "class": c, "metric": m, "value": float(v), "n_queries": int(q)}
                            for m, row in zip(metrics, unit_values) for c, v, q in zip(class_names, row, n_q)]
            rows += [dict(zip(ROW_COLUMNS, (
                1, "0.1.0", "abc1234", "2026-11-23T13:00:00Z", cid, "synthetic", "efficientnet_lite0", "f" * 64,
                name, family, '{"margin": 0.2}',
                level, FIDS[level], 100, 100, f"h{level}", k, 0 if k == 0 else EPISODES, seed,
                m, float(v), 0.01, 2900, 8, "faiss", "ok", "", 1.25, 512.0, "cpu", "c" * 40, config)))
                for m, v in zip(metrics, values)]
        n_rows += len(rows)
        doc = {"cell_id": cid, "status": "ok", "error": "",
               "config": {"methods": [name], "split_level": level, "ks": list(ks)},
               "rows": rows, "episodes": unit_table(episodes, EPISODE_UNIT_COLUMNS),
               "classes": unit_table(classes, CLASS_UNIT_COLUMNS)}  # the tables the runner writes
        (cells / f"{cid}.json").write_bytes(orjson.dumps(doc))
    return n_rows


def reference_read(results: Path) -> pd.DataFrame:
    """The obvious reader: json.load per file, one dict per row, a DataFrame from the list."""
    rows: list[dict[str, object]] = []
    for f in sorted((results / "cells").glob("*.json")):
        with f.open() as fh:
            rows.extend(json.load(fh)["rows"])
    return pd.DataFrame(rows)


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MB (`ru_maxrss` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, tuple[float, float]]:
    """`fn(*args)` and its (wall, cpu) seconds."""
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, (time.perf_counter() - w, time.process_time() - c)


def main() -> None:
    """Run the benchmark and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--study", action="store_true", help="336 cells shaped like the CUB-subset study (14 methods x "
                                                         "8 levels x 3 seeds, every k in each cell)")
    ap.add_argument("--results", type=Path, default=None, help="time the report of this existing results folder")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=25, help="test classes per zero-shot cell")
    ap.add_argument("--keep", type=Path, default=None, help="write the store here and keep it (reused when complete)")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference reader (it holds every row dict)")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="oodml-bench-report-"))
    results = args.results or tmp / "results"
    n_cells = 14 * len(LEVELS) * 3 if args.study else args.cells
    try:
        existing = len(list((results / "cells").glob("*.json"))) if (results / "cells").is_dir() else 0
        if args.results is None and existing != n_cells:
            shutil.rmtree(results, ignore_errors=True)
            t = time.perf_counter()
            write_store(results, n_cells, n_methods=14 if args.study else 20, n_classes=args.classes, all_k=args.study)
            log(f"wrote {n_cells} cell files in {time.perf_counter() - t:.1f}s")
        store, t_read = timed(read_store, results)
        rss = {"read_store": peak_rss_mb()}
        dataset = store.datasets[0]
        _, t_agg = timed(aggregate, store, dataset, None, 0)
        _, t_agg_ci = timed(aggregate, store, dataset, None, args.bootstrap)
        rss["aggregate"] = peak_rss_mb()
        n_cells, n_rows, n_units = len(store.cells), len(store.rows), len(store.units)
        del store
        paths, t_all = timed(lambda: build_report(results=results, metric=None, bootstrap=0))
        rss["build_report, no intervals"] = peak_rss_mb()
        _, t_ci = timed(lambda: build_report(results=results, metric=None, bootstrap=args.bootstrap))
        rss[f"build_report, bootstrap {args.bootstrap}"] = peak_rss_mb()
        t_ref: tuple[float, float] | None = None
        if not args.no_reference:  # last: it holds every row dict at once, which would mask the peaks above
            ref, t_ref = timed(reference_read, results)
            assert len(ref) == n_rows
            del ref
            rss["reference reader"] = peak_rss_mb()
        print(f"cells                          {n_cells}")
        print(f"rows                           {n_rows}")
        print(f"unit values                    {n_units}")
        print("                               wall s   cpu s")
        if t_ref is not None:
            print(f"reference reader (json.load)   {t_ref[0]:7.2f} {t_ref[1]:7.2f}")
        print(f"read_store (validated)         {t_read[0]:7.2f} {t_read[1]:7.2f}"
              + (f"   cpu ratio to reference {t_read[1] / t_ref[1]:.2f}" if t_ref is not None else ""))
        print(f"aggregate, no intervals        {t_agg[0]:7.2f} {t_agg[1]:7.2f}")
        print(f"aggregate, bootstrap {args.bootstrap:<6d}    {t_agg_ci[0]:7.2f} {t_agg_ci[1]:7.2f}")
        print(f"build_report, no intervals     {t_all[0]:7.2f} {t_all[1]:7.2f}   ({len(paths)} files)")
        print(f"build_report, bootstrap {args.bootstrap:<6d} {t_ci[0]:7.2f} {t_ci[1]:7.2f}   ratio to no intervals: "
              f"wall {t_ci[0] / t_all[0]:.2f}, cpu {t_ci[1] / t_all[1]:.2f} (goal <= 2)")
        print(f"all.csv size                   {(results / dataset / 'all.csv').stat().st_size / 1e6:.0f} MB")
        print("peak RSS of the process after each step (resource.getrusage, MB): "
              + "; ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
