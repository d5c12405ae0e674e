"""Synthetic result stores written exactly as the Runner contract says: `<results>/cells/<cell_id>.json`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oodml.schema import ROW_COLUMNS

#: method -> family of the default synthetic grid
METHOD_FAMILIES: dict[str, str] = {"transfer": "transfer", "proto": "fewshot", "margin": "dml",
                                   "adapted_proto": "adapted", "adapted_hist": "adapted"}
FIDS = {1: 10.0, 2: 25.0, 3: 45.0, 4: 80.0}


def cell_id(dataset: str, method: str, level: int, k: int, seed: int) -> str:
    """A stable cell id for the synthetic grid."""
    return hashlib.sha1(f"{dataset}|{method}|{level}|{k}|{seed}".encode()).hexdigest()[:16]


def make_row(*, dataset: str, method: str, family: str, level: int, k: int, seed: int, metric: str | None,
             value: float | None, status: str = "ok", error: str = "", fid: float | None = None) -> dict[str, Any]:
    """One GUIDE §5 row with exactly ROW_COLUMNS."""
    row: dict[str, Any] = {
        "schema_version": 1, "oodml_version": "0.1.0", "git_sha": "abc1234",
        "created_at": f"2026-11-23T12:{level:02d}:{seed:02d}Z",
        "cell_id": cell_id(dataset, method, level, k, seed),
        "dataset": dataset, "backbone": "efficientnet_lite0", "feature_hash": "f" * 12,
        "method": method, "method_family": family, "method_params": "{}",
        "split_level": level, "split_fid": FIDS.get(level, 10.0 * level) if fid is None else fid,
        "n_train_classes": 20, "n_test_classes": 10, "split_hash": f"h{level}",
        "k_shot": k, "n_episodes": 0 if k == 0 else 3, "seed": seed,
        "metric": metric, "value": value, "episode_std": 0.0, "n_queries": 50, "knn_k": 8, "knn_backend": "faiss",
        "status": status, "error": error, "wall_time_s": 0.5, "peak_mem_mb": 10.0, "device": "cpu",
        "config_hash": "c" * 8, "config_json": "{}",
    }
    assert tuple(row) == ROW_COLUMNS
    return row


def write_cell(results: Path, rows: list[dict[str, Any]], *, status: str = "ok", error: str = "",
               cid: str | None = None, config: Mapping[str, Any] | None = None,
               episodes: list[dict[str, Any]] | None = None, classes: list[dict[str, Any]] | None = None) -> Path:
    """Write one cell file as the runner does (cell_id, status, error, config, rows, episodes; `classes` only when
    given, as cell files before per-class values had none)."""
    cid = cid or rows[0]["cell_id"]
    path = results / "cells" / f"{cid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {"cell_id": cid, "status": status, "error": error, "config": dict(config or {}), "rows": rows,
            "episodes": list(episodes or [])}
    if classes is not None:
        cell["classes"] = classes
    path.write_text(json.dumps(cell))
    return path


def write_unit_cell(results: Path, *, method: str, level: int, seed: int, k: int, values: Sequence[float],
                    n_queries: Sequence[int] | None = None, dataset: str = "u", family: str = "dml",
                    metric: str = "recall@1", split_hash: str | None = None, variant: str = "",
                    classes: Sequence[str] | None = None) -> Path:
    """One cell with per-unit values, laid out as the runner writes them: k > 0 -> `episodes` (episode i has
    `values[i]`; the row is their mean), k = 0 -> `classes` (class `c<i>` or `classes[i]` has `values[i]` over
    `n_queries[i]` queries; the row is the query-weighted mean)."""
    label = f"{method}[{variant}]" if variant else method
    if k > 0:
        agg = float(np.mean(values))
    else:
        w = np.asarray(n_queries if n_queries is not None else [1] * len(values), float)
        agg = float(np.sum(w * np.asarray(values, float)) / w.sum())
    row = make_row(dataset=dataset, method=label, family=family, level=level, k=k, seed=seed, metric=metric,
                   value=agg)
    if split_hash is not None:
        row["split_hash"] = split_hash
    cid = cell_id(dataset, label, level, k, seed)
    row["cell_id"] = cid
    config = {"methods": [method], "ks": [k]}
    if k > 0:
        eps = [{"cell_id": cid, "method": label, "split_level": level, "k_shot": k, "seed": seed, "episode": i,
                "metric": metric, "value": float(v)} for i, v in enumerate(values)]
        return write_cell(results, [row], config=config, episodes=eps)
    names = list(classes) if classes is not None else [f"c{i}" for i in range(len(values))]
    nq = list(n_queries) if n_queries is not None else [1] * len(values)
    cls = [{"variant": variant, "k": 0, "class": c, "metric": metric, "value": float(v), "n_queries": int(q)}
           for c, v, q in zip(names, values, nq)]
    return write_cell(results, [row], config=config, episodes=[], classes=cls)


def write_grid(results: Path, *, seed: int = 0, dataset: str = "synthetic",
               methods: Mapping[str, str] = METHOD_FAMILIES, levels: Sequence[int] = (1, 2, 3, 4),
               ks: Sequence[int] = (0, 2, 5), seeds: Sequence[int] = (0, 1, 2)) -> int:
    """A full grid laid out as the runner does: one cell per (method, level, seed) with rows for every k.

    Values come from a seeded rng: recall@1 and map@r at every k, accuracy at k > 0. Returns the cell count.
    """
    rng = np.random.default_rng(seed)
    n = 0
    for method, family in methods.items():
        for level in levels:
            for s in seeds:
                cid = cell_id(dataset, method, level, -1, s)
                rows = []
                for k in ks:
                    for m in ["recall@1", "map@r"] + (["accuracy"] if k > 0 else []):
                        row = make_row(dataset=dataset, method=method, family=family, level=level, k=k, seed=s,
                                       metric=m, value=float(rng.uniform(0.05, 0.95)))
                        rows.append({**row, "cell_id": cid})
                write_cell(results, rows, config={"method": method, "ks": list(ks)})
                n += 1
    return n


@pytest.fixture
def grid_store(tmp_path: Path) -> Path:
    """A synthetic results folder: 5 methods x 4 levels x k in {0,2,5} x 3 seeds."""
    results = tmp_path / "results"
    write_grid(results)
    return results


@pytest.fixture(scope="session")
def grid_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The default synthetic grid, reported once per session: (results folder, written paths). Read only."""
    from oodml.report import build_report

    results = tmp_path_factory.mktemp("grid_report") / "results"
    write_grid(results)
    return results, build_report(results=results, metric=None)
