"""Read the result store: every `<results>/cells/*.json` into one validated tidy DataFrame (GUIDE §5, SPEC §4).

Rows keep the order of the (sorted) file names, then their order within each file. Reading is built for large
stores (100,000 cell files in seconds): the files are read as raw bytes and parsed by orjson (the stdlib parser
only for a file orjson rejects, e.g. one with NaN literals) with the cyclic garbage collector paused; the rows are
gathered with C-level iterators into one DataFrame; validation is vectorised; the key columns become categoricals.
Only when a check fails does a slower path look for the file to blame.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oodml.errors import OodmlError
from oodml.progress import is_terminal, log, progress
from oodml.schema import ROW_COLUMNS, STATUSES

#: Columns that identify a result row's place in the grid (the leaderboard groups by these).
KEY_COLUMNS: tuple[str, ...] = ("dataset", "method", "method_family", "split_level", "k_shot", "seed")
#: One row per cell file.
CELL_COLUMNS: tuple[str, ...] = ("cell_id", "status", "error", "file", "n_rows", *KEY_COLUMNS)
_INT_COLUMNS = ("split_level", "k_shot", "seed")
_FLOAT_COLUMNS = ("value", "split_fid", "episode_std", "wall_time_s", "peak_mem_mb")
#: Where a cell without rows may name its grid key in its `config` (first match wins, also one level deep).
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset",), "method": ("method",), "method_family": ("method_family", "family"),
    "split_level": ("split_level", "level", "shift"), "k_shot": ("k_shot", "k"), "seed": ("seed",),
}
_CHUNK = 2000
#: Per-unit values (issue 17): one row per (cell, method variant, k, metric, episode or class). `episode` is set on
#: k-shot units (the split file's episode index), `class` on zero-shot units (a test class); `n_queries` is the
#: class's query count (its weight in the cell's aggregate), NaN for episodes (equal weights).
UNIT_COLUMNS: tuple[str, ...] = ("cell_id", "dataset", "method", "method_family", "split_level", "split_hash",
                                 "k_shot", "seed", "metric", "episode", "class", "value", "n_queries")
#: The payload lists that hold per-unit values, with their unit column: k-shot episodes, zero-shot test classes.
UNIT_LISTS: dict[str, str] = {"episodes": "episode", "classes": "class"}
#: Few distinct values, grouped and compared often: stored as pandas categoricals.
_CATEGORY_COLUMNS = ("dataset", "method", "method_family", "metric", "status")

_fast_loads: Callable[[bytes], Any] = json.loads
try:  # the fast path: orjson parses cell files about twice as fast as the stdlib
    from orjson import loads as _orjson_loads

    _fast_loads = _orjson_loads
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class Store:
    """The parsed store: `rows` has exactly `ROW_COLUMNS`; `cells` has `CELL_COLUMNS` (one per cell file)."""

    root: Path
    rows: pd.DataFrame
    cells: pd.DataFrame
    units: pd.DataFrame = field(default_factory=lambda: empty_units())

    @property
    def datasets(self) -> list[str]:
        """Datasets present, sorted."""
        return sorted({str(v) for v in self.rows["dataset"].dropna().unique()}
                      | {str(v) for v in self.cells["dataset"].dropna().unique()})


#: Columns of `grid_entries`.
GRID_COLUMNS: tuple[str, ...] = ("cell_id", "method", "method_family", "split_level", "k_shot", "seed", "status",
                                 "error")


def grid_entries(store: Store, dataset: str) -> pd.DataFrame:
    """What ran for one dataset: every row's key and status, plus row-less cells with a known k.

    A runner cell may hold several k (and each k several metrics), so error counts and the list of k come from
    here rather than from the cell files' own status.
    """
    rows = store.rows.loc[store.rows["dataset"] == dataset, list(GRID_COLUMNS)]
    cells = store.cells[(store.cells["dataset"] == dataset) & (store.cells["n_rows"] == 0)]
    rowless = cells.dropna(subset=["method", "k_shot"])
    out = pd.concat([rows, rowless[list(GRID_COLUMNS)]], ignore_index=True) if len(rowless) else rows
    if out["method_family"].isna().any():
        out = out.assign(method_family=out["method_family"].astype(object).fillna("?"))
    for col in ("split_level", "k_shot", "seed"):
        out[col] = pd.to_numeric(out[col], errors="coerce").fillna(-1).astype(np.int64)
    return out.reset_index(drop=True)


def run_hint(results: Path) -> str:
    """The command that fills a results folder."""
    return f"run `oodml run --method NAME --results {results}` first"


def cell_files(results: Path) -> list[str]:
    """The cell file paths of a results folder, sorted by name; OodmlError when there are none."""
    results = Path(results)
    if not results.is_dir():
        raise OodmlError(f"results folder {str(results)!r} does not exist; {run_hint(results)}")
    folder = results / "cells"
    names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".json")) if folder.is_dir() else []
    if not names:
        raise OodmlError(f"results folder {str(results)!r} has no cell files (cells/*.json); {run_hint(results)}")
    return [os.path.join(folder, n) for n in names]


def read_store(results: Path) -> Store:
    """Read and validate every cell file under `results/cells/`.

    Args:
        results: the folder `oodml run --results` wrote.

    Returns:
        The rows (exactly `ROW_COLUMNS`, sorted by grid key) and one summary row per cell.

    Raises:
        OodmlError: no cell files, or a corrupt cell file / invalid row (naming the file to delete and rerun).
    """
    files = cell_files(results)
    with _gc_paused():  # millions of small dicts: the cyclic GC would rescan them again and again
        cells = _parse_files(files)
        rows, row_cell = _gather_rows(cells, files)
        table = _cell_table(cells, files, rows, row_cell)
        units = _gather_units(cells, files, table, rows, row_cell)
        del cells
    _validate(rows, row_cell, table)
    for col in _CATEGORY_COLUMNS:  # factorised once here, not in every group-by and comparison downstream
        rows[col] = rows[col].astype("category")
    return Store(Path(results), rows, table, units)


def empty_units() -> pd.DataFrame:
    """A unit table without rows (`UNIT_COLUMNS`)."""
    return pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "n_queries") else object) for c in UNIT_COLUMNS})


def _cell_spec(cell: Mapping[str, Any], first_method: Any) -> str:
    """The method spec a cell ran (its `config.methods[0]`), which a unit's `variant` is appended to."""
    config = cell.get("config") or {}
    methods = config.get("methods") if isinstance(config, Mapping) else None
    if isinstance(methods, list) and methods and isinstance(methods[0], str):
        return methods[0]
    spec = config.get("method") if isinstance(config, Mapping) else None
    if isinstance(spec, str):
        return spec
    return str(first_method).split("[", 1)[0] if isinstance(first_method, str) else ""


def _unit_entries(cells: list[dict[str, Any]], files: list[str], key: str, unit: str,
                  specs: list[str]) -> pd.DataFrame | None:
    """The entries of one per-unit list (`episodes` or `classes`) of every ok cell, as (cell, method, k, unit,
    metric, value, n_queries) columns. Entries name their method (`method`, as the runner writes episodes) or
    their embedding variant (`variant`, appended to the cell's spec as `spec[variant]`), and `k_shot` or `k`."""
    per_cell = [c.get(key) or [] if c.get("status") == "ok" else [] for c in cells]
    if not any(per_cell):
        return None
    bad = [i for i, lst in enumerate(per_cell) if not isinstance(lst, list)]
    if bad:
        raise OodmlError(f"cell file {files[bad[0]]!r} has a `{key}` that is not a list; delete it and rerun "
                         "`oodml run`")
    counts = np.fromiter(map(len, per_cell), dtype=np.int64, count=len(per_cell))
    cell_idx = np.repeat(np.arange(len(cells)), counts)
    flat = list(itertools.chain.from_iterable(per_cell))
    first = flat[0] if isinstance(flat[0], Mapping) else {}
    names = ("method" if "method" in first else "variant", "k_shot" if "k_shot" in first else "k", unit, "metric",
             "value")
    try:
        tuples = list(map(itemgetter(*names), flat))
        n_q = (np.fromiter(map(itemgetter("n_queries"), flat), dtype=float, count=len(flat)) if unit == "class"
               else np.full(len(flat), np.nan))
    except (KeyError, TypeError, ValueError):
        for i, e in enumerate(flat):
            if not isinstance(e, Mapping) or not set(names) <= set(e) or (unit == "class" and "n_queries" not in e):
                want = ", ".join(names + (("n_queries",) if unit == "class" else ()))
                raise OodmlError(f"cell file {files[cell_idx[i]]!r} has a `{key}` entry without {want}; delete it "
                                 "and rerun `oodml run`") from None
        raise OodmlError(f"cell file {files[cell_idx[0]]!r} has malformed `{key}` entries; rerun `oodml run`") from None
    out = pd.DataFrame.from_records(tuples, columns=["method", "k_shot", unit, "metric", "value"])
    out["n_queries"] = n_q
    if names[0] == "variant":
        spec = np.asarray(specs, dtype=object)[cell_idx]
        variant = out["method"].fillna("").astype(str).to_numpy(dtype=object)
        out["method"] = [s if not v else f"{s}[{v}]" for s, v in zip(spec, variant)]
    out.insert(0, "_cell", cell_idx)
    return out


def _gather_units(cells: list[dict[str, Any]], files: list[str], table: pd.DataFrame, rows: pd.DataFrame,
                  row_cell: np.ndarray) -> pd.DataFrame:
    """Every per-unit value of the store (`UNIT_COLUMNS`); old cell files without unit lists add none."""
    first_method = table.get("method", pd.Series([None] * len(cells))).tolist()
    specs = [_cell_spec(c, m) for c, m in zip(cells, first_method)]
    parts = [p for key, unit in UNIT_LISTS.items() if (p := _unit_entries(cells, files, key, unit, specs)) is not None]
    if not parts:
        return empty_units()
    units = pd.concat(parts, ignore_index=True, sort=False)
    idx = units.pop("_cell").to_numpy()
    units["k_shot"] = pd.to_numeric(units["k_shot"], errors="coerce")
    units["value"] = pd.to_numeric(units["value"], errors="coerce").astype(float)
    value, n_q = units["value"].to_numpy(), units["n_queries"].to_numpy()
    is_class = units["class"].notna().to_numpy() if "class" in units else np.zeros(len(units), bool)
    bad = (np.isnan(value) | (value < 0) | (value > 1) | units["k_shot"].isna().to_numpy()
           | (is_class & ~(n_q > 0)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise OodmlError(f"cell file {files[idx[i]]!r} has a per-unit value that is missing, outside [0, 1] or "
                         "without a positive n_queries; delete it and rerun `oodml run`")
    hashes = rows.drop_duplicates("cell_id").set_index("cell_id")["split_hash"] if len(rows) else pd.Series()
    cell_ids = table["cell_id"].to_numpy(dtype=object)[idx]
    out = pd.DataFrame({"cell_id": cell_ids, "dataset": table["dataset"].to_numpy(dtype=object)[idx],
                        "method": units["method"].astype(str).to_numpy(),
                        "method_family": table["method_family"].to_numpy(dtype=object)[idx],
                        "split_level": pd.to_numeric(table["split_level"], errors="coerce").to_numpy()[idx],
                        "split_hash": pd.Series(cell_ids).map(hashes).to_numpy(dtype=object),
                        "k_shot": units["k_shot"].astype(np.int64).to_numpy(),
                        "seed": pd.to_numeric(table["seed"], errors="coerce").to_numpy()[idx],
                        "metric": units["metric"].astype(str).to_numpy(),
                        "episode": units["episode"].to_numpy() if "episode" in units else np.nan,
                        "class": units["class"].to_numpy(dtype=object) if "class" in units else None,
                        "value": value, "n_queries": n_q})
    out["episode"] = pd.to_numeric(out["episode"], errors="coerce").astype("Int64")
    for col in ("dataset", "method", "method_family", "metric"):
        out[col] = out[col].astype("category")
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse_files(files: list[str]) -> list[dict[str, Any]]:
    """Read and parse every file (orjson when installed; the stdlib parser for files with NaN literals)."""
    if is_terminal():  # a bar on a terminal; off it, silent, so that an error stays the only stderr line
        blobs: list[bytes] = []
        with progress("report: reading cell files", len(files), unit="files") as bar:
            for i in range(0, len(files), _CHUNK):
                blobs.extend(map(_read_bytes, files[i:i + _CHUNK]))
                bar.update(len(files[i:i + _CHUNK]))
    else:
        blobs = list(map(_read_bytes, files))
    cells = list(map(_parse_one, files, blobs))
    bad = [i for i, c in enumerate(cells) if not isinstance(c, dict) or not isinstance(c.get("rows", []), list)]
    if bad:
        raise OodmlError(f"cell file {files[bad[0]]!r} is not a cell object with a `rows` list; "
                         "delete it and rerun `oodml run`")
    return cells


def _parse_one(path: str, blob: bytes) -> Any:
    try:
        return _fast_loads(blob)
    except ValueError:
        pass
    try:
        return json.loads(blob)  # also accepts NaN/Infinity, which Python's json.dumps writes
    except ValueError as e:
        raise OodmlError(f"cell file {path!r} is not valid JSON ({e}); delete it and rerun `oodml run`") from None


def _gather_rows(cells: list[dict[str, Any]], files: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """All rows as one DataFrame, plus the index of the cell each row came from."""
    per_cell = [c.get("rows") or [] for c in cells]
    counts = np.fromiter(map(len, per_cell), dtype=np.int64, count=len(per_cell))
    row_cell = np.repeat(np.arange(len(cells)), counts)
    flat = list(itertools.chain.from_iterable(per_cell))
    if not flat:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ROW_COLUMNS}), row_cell
    sizes = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
    try:
        if not (sizes == len(ROW_COLUMNS)).all():
            raise KeyError
        tuples = list(map(itemgetter(*ROW_COLUMNS), flat))
    except (KeyError, TypeError):
        raise OodmlError(_bad_columns(flat, row_cell, files)) from None
    rows = pd.DataFrame.from_records(tuples, columns=list(ROW_COLUMNS))
    for col in _FLOAT_COLUMNS:
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    for col in _INT_COLUMNS:
        num = pd.to_numeric(rows[col], errors="coerce")
        if num.isna().any():
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise OodmlError(f"cell file {files[row_cell[i]]!r} has a row without an integer {col}; "
                             "delete it and rerun `oodml run`")
        rows[col] = num.astype(np.int64)
    return rows, row_cell


def _bad_columns(flat: list[Any], row_cell: np.ndarray, files: list[str]) -> str:
    want = set(ROW_COLUMNS)
    for i, row in enumerate(flat):
        have = set(row) if isinstance(row, Mapping) else set()
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            return (f"cell file {files[row_cell[i]]!r} has a row with the wrong columns (missing {missing}, "
                    f"unexpected {extra}); it was written by another oodml version: delete it and rerun `oodml run`")
    return "cell rows do not match oodml.schema.ROW_COLUMNS; rerun `oodml run`"  # pragma: no cover


def _cell_table(cells: list[dict[str, Any]], files: list[str], rows: pd.DataFrame,
                row_cell: np.ndarray) -> pd.DataFrame:
    """One row per cell file; the grid key comes from its first row, else from its config."""
    table = pd.DataFrame({
        "cell_id": [str(c.get("cell_id") or Path(f).stem) for c, f in zip(cells, files)],
        "status": [c.get("status") for c in cells],
        "error": [c.get("error") or "" for c in cells],
        "file": files,
        "n_rows": np.bincount(row_cell, minlength=len(cells)),
    })
    first = pd.DataFrame({"_cell": row_cell}).drop_duplicates("_cell")
    keyed = rows.loc[first.index, list(KEY_COLUMNS)].set_axis(first["_cell"].to_numpy())
    for col in KEY_COLUMNS:
        table[col] = keyed[col].reindex(table.index).astype(object)
    for i in np.flatnonzero(table["n_rows"].to_numpy() == 0):  # row-less cells only (errors); few
        config = cells[i].get("config") or {}
        for col in KEY_COLUMNS:
            table.at[i, col] = _from_config(config, col)
    known = table["dataset"].dropna().unique()
    if len(known) == 1:
        table["dataset"] = table["dataset"].fillna(known[0])
    return table


def _from_config(config: Any, col: str) -> Any:
    if not isinstance(config, Mapping):
        return None
    for scope in [config, *[v for v in config.values() if isinstance(v, Mapping)]]:
        for key in _CONFIG_KEYS[col]:
            value = scope.get(key)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return value
    return None


def _validate(rows: pd.DataFrame, row_cell: np.ndarray, table: pd.DataFrame) -> None:
    """Statuses are known; ok rows have a metric and a value in [0, 1] (GUIDE §5)."""
    bad_cell = ~table["status"].isin(STATUSES).to_numpy()
    if bad_cell.any():
        i = int(np.flatnonzero(bad_cell)[0])
        raise OodmlError(f"cell file {table.at[i, 'file']!r} has status {table.at[i, 'status']!r}, not one of "
                         f"{', '.join(STATUSES)}; delete it and rerun `oodml run`")
    checks = [
        (~rows["status"].isin(STATUSES).to_numpy(), "a row status that is not one of " + ", ".join(STATUSES)),
    ]
    ok = (rows["status"] == "ok").to_numpy()
    value = rows["value"].to_numpy(dtype=float)
    checks += [
        (ok & np.isnan(value), "an ok row whose value is NaN or missing"),
        (ok & ~np.isnan(value) & ((value < 0) | (value > 1)), "an ok row whose value is outside [0, 1]"),
        (ok & rows["metric"].isna().to_numpy(), "an ok row without a metric"),
    ]
    for mask, what in checks:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise OodmlError(f"cell file {table.at[int(row_cell[i]), 'file']!r} has {what} (metric "
                             f"{rows.at[i, 'metric']!r}, value {rows.at[i, 'value']!r}); delete it and rerun "
                             "`oodml run`")
    if table["dataset"].isna().any():
        log(f"report: {int(table['dataset'].isna().sum())} cell(s) without rows name no dataset; "
            "they are counted in no dataset's report")
