"""Read the result store: every `<results>/cells/*.json` into one validated tidy DataFrame (docs/formats.md, results folder).

Rows keep the order of the (sorted) file names, then their order within each file. Reading is built for large
stores (100,000 cell files, 7.6 million per-unit values): the files are parsed in chunks (orjson; the stdlib parser
only for a file orjson rejects, e.g. one with NaN literals) with the cyclic garbage collector paused; each chunk
becomes row tuples and columnar numpy arrays (integer codes for methods, metrics and classes; float values) before
the next is parsed, so no dict per unit outlives its chunk; validation is vectorised; the key columns become
categoricals. Only when a check fails does a slower path look for the file to blame.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oodml.errors import OodmlError
from oodml.progress import is_terminal, log, progress
from oodml.schema import ROW_COLUMNS, STATUSES, is_unit_table

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

    The files are parsed in chunks of `_CHUNK`: each chunk's parsed objects are turned into columns (row tuples,
    and numpy arrays of codes and values for the per-unit entries) and dropped before the next chunk is parsed, so
    memory holds the columnar store plus one chunk of parsed JSON, never a dict per unit of the whole store.

    Args:
        results: the folder `oodml run --results` wrote.

    Returns:
        The rows (exactly `ROW_COLUMNS`, in file order), one summary row per cell, and the per-unit values.

    Raises:
        OodmlError: no cell files, or a corrupt cell file / invalid row (naming the file to delete and rerun).
    """
    files = cell_files(results)
    kept: list[str] = []  # the files read, less identical repeats of a cell (`_Repeats`)
    acc = _Accumulator(kept)
    repeats = _Repeats()
    with _gc_paused():  # many small dicts per chunk: the cyclic GC would rescan them again and again
        # a bar on a terminal; off it, silent, so that an error stays the only stderr line
        with progress("report: reading cell files", len(files), unit="files") if is_terminal() else nullcontext() as bar:
            for start in range(0, len(files), _CHUNK):
                chunk = files[start:start + _CHUNK]
                pairs = repeats.first_copies(chunk, _parse_files(chunk))
                offset = len(kept)
                kept += [f for f, _ in pairs]
                acc.add(offset, [c for _, c in pairs])
                if bar is not None:
                    bar.update(len(chunk))
        repeats.note()
        rows, row_cell = acc.rows()
        table = _cell_table(acc, kept, rows, row_cell)
        units = acc.units(table, rows)
    _validate(rows, row_cell, table)
    for col in _CATEGORY_COLUMNS:  # factorised once here, not in every group-by and comparison downstream
        rows[col] = rows[col].astype("category")
    return Store(Path(results), rows, table, units)


class _Repeats:
    """Cell files that carry the same `cell_id` (a cell copied under another name, or two folders merged): an
    identical copy (the same rows and per-unit values) is counted once, with one note; copies whose values differ
    are an OodmlError naming both files, since either could be the right one."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int]] = {}
        self.dropped: list[str] = []

    def first_copies(self, files: list[str], cells: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """The (file, cell) pairs of a chunk less the identical repeats of cells already read."""
        out = []
        for f, c in zip(files, cells):
            cell_id = str(c.get("cell_id") or Path(f).stem)
            digest = _values_digest(c)
            first = self.seen.setdefault(cell_id, (f, digest))
            if first[0] == f:
                out.append((f, c))
            elif first[1] == digest:
                self.dropped.append(f)
            else:
                raise OodmlError(f"cell files {first[0]!r} and {f!r} both hold cell {cell_id} with different values; "
                                 "keep the right one (delete the other, or rerun that cell with `oodml run --force`)")
        return out

    def note(self) -> None:
        """One log line when identical repeats were left out."""
        if self.dropped:
            log(f"note: {len(self.dropped)} cell file(s) repeat another file's cell with identical values and are "
                f"counted once (e.g. {self.dropped[0]!r})")


def _values_digest(cell: dict[str, Any]) -> int:
    """A hash of what a cell file reports: its rows' (method, k, metric, value, status) and how many per-unit values
    it holds (the rows' values are their means: hashing every unit value would slow a large report down)."""
    rows = cell.get("rows") or []
    key = tuple((r.get("method"), r.get("k_shot"), r.get("metric"), r.get("value"), r.get("status"))
                if isinstance(r, Mapping) else repr(r) for r in rows)
    units = tuple(len(u.get("rows") or ()) if isinstance(u, Mapping) else len(u) if isinstance(u, list) else repr(u)
                  for u in (cell.get(k) for k in UNIT_LISTS))
    return hash((cell.get("status"), key, units))


def empty_units() -> pd.DataFrame:
    """A unit table without rows (`UNIT_COLUMNS`)."""
    return pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "n_queries") else object) for c in UNIT_COLUMNS})


class _BadUnits(ValueError):
    """A cell's per-unit list is malformed (the message has a `{key}` placeholder for the list's name)."""


def _unit_tuples(obj: Any, unit: str, spec: str) -> list[tuple[Any, ...]]:
    """One ok cell's per-unit entries as `(method, k, unit label, metric, value, n_queries)` tuples.

    `obj` is the cell file's table (`{"columns", "rows"}`, `oodml.schema.unit_table`) or the older list of objects.
    An entry names its embedding `variant` (appended to the cell's method spec as `spec[variant]`) or, as older
    episode lists do, its `method`; and `k` or `k_shot`. `n_queries` is None for episodes.
    """
    table = is_unit_table(obj)
    columns: list[Any] = []
    entries: list[Any]
    keys: Any
    if table:
        columns = obj["columns"]
        entries, keys = obj["rows"], columns
    elif isinstance(obj, list):
        entries = obj
        keys = obj[0] if obj and isinstance(obj[0], Mapping) else {}
    else:
        raise _BadUnits("a `{key}` that is neither a list nor a {{columns, rows}} table")
    if not entries:
        return []
    names = ("method" if "method" in keys else "variant", "k_shot" if "k_shot" in keys else "k", unit, "metric",
             "value") + (("n_queries",) if unit == "class" else ())
    if not set(names) <= set(keys):
        raise _BadUnits(f"a `{{key}}` entry without {', '.join(names)}")
    pick = itemgetter(*(columns.index(n) for n in names)) if table else itemgetter(*names)
    try:
        out = list(map(pick, entries))
    except (KeyError, IndexError, TypeError):
        raise _BadUnits(f"a `{{key}}` entry without {', '.join(names)}") from None
    if unit != "class":
        out = [t + (None,) for t in out]
    if names[0] == "variant":
        out = [(spec if v is None or v == "" or v != v else f"{spec}[{v}]", *rest) for v, *rest in out]
    return out


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


class _Codes:
    """Integer codes for the strings of one column, shared by every chunk (first-seen order)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def encode(self, values: Any) -> np.ndarray:
        """The codes of `values` (any sequence; each value is taken as `str(value)`)."""
        codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
        table = np.fromiter((self.index.setdefault(str(u), len(self.index)) for u in uniques), dtype=np.int32,
                            count=len(uniques))
        return table[codes] if len(codes) else np.zeros(0, np.int32)

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """A categorical with sorted categories (as `astype("category")` gives) from codes of `encode` (-1: NaN)."""
        names = list(self.index)
        order = np.argsort(np.asarray(names, dtype=object), kind="stable") if names else np.zeros(0, np.int64)
        rank = np.empty(len(names), np.int32)
        rank[order] = np.arange(len(names), dtype=np.int32)
        sorted_names = pd.Index([names[i] for i in order])
        mapped = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1) if len(names) else np.full(len(codes), -1)
        return pd.Categorical.from_codes(mapped, categories=sorted_names)


@dataclass
class _UnitColumns:
    """The per-unit entries of one unit list (`episodes` or `classes`) of every chunk, as column parts."""

    unit: str
    cell: list[np.ndarray] = field(default_factory=list)
    method: list[np.ndarray] = field(default_factory=list)
    k: list[np.ndarray] = field(default_factory=list)
    label: list[np.ndarray] = field(default_factory=list)
    metric: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    n_queries: list[np.ndarray] = field(default_factory=list)


class _Accumulator:
    """Columns gathered chunk by chunk: row tuples, per-cell summaries, per-unit arrays."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.row_parts: list[pd.DataFrame] = []
        self.row_cells: list[np.ndarray] = []
        self.cell_ids: list[str] = []
        self.statuses: list[Any] = []
        self.errors: list[Any] = []
        self.specs: list[str] = []
        self.rowless_configs: dict[int, Any] = {}
        self.methods, self.metrics, self.classes = _Codes(), _Codes(), _Codes()
        self.unit_lists = {key: _UnitColumns(unit) for key, unit in UNIT_LISTS.items()}

    def add(self, offset: int, cells: list[dict[str, Any]]) -> None:
        """Take one chunk of parsed cell files (`files[offset:offset + len(cells)]`)."""
        files = self.files
        per_cell = [c.get("rows") or [] for c in cells]
        counts = np.fromiter(map(len, per_cell), dtype=np.int64, count=len(per_cell))
        row_cell = np.repeat(np.arange(offset, offset + len(cells)), counts)
        self.row_cells.append(row_cell)
        flat = list(itertools.chain.from_iterable(per_cell))
        first_method: list[Any] = [rows[0].get("method") if rows and isinstance(rows[0], Mapping) else None
                                   for rows in per_cell]
        if flat:
            sizes = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
            try:
                if not (sizes == len(ROW_COLUMNS)).all():
                    raise KeyError
                tuples = list(map(itemgetter(*ROW_COLUMNS), flat))
            except (KeyError, TypeError):
                raise OodmlError(_bad_columns(flat, row_cell, files)) from None
            self.row_parts.append(_dedup_strings(pd.DataFrame.from_records(tuples, columns=list(ROW_COLUMNS))))
        for i, (c, f) in enumerate(zip(cells, files[offset:offset + len(cells)])):
            self.cell_ids.append(str(c.get("cell_id") or Path(f).stem))
            self.statuses.append(c.get("status"))
            self.errors.append(c.get("error") or "")
            if not counts[i]:
                self.rowless_configs[offset + i] = c.get("config") or {}
        specs = [_cell_spec(c, m) for c, m in zip(cells, first_method)]
        self.specs += specs
        for key, cols in self.unit_lists.items():
            self._add_units(cells, offset, key, cols, specs)

    def _add_units(self, cells: list[dict[str, Any]], offset: int, key: str, cols: _UnitColumns,
                   specs: list[str]) -> None:
        """The entries of one per-unit list (table or list of objects, `_unit_tuples`) of every ok cell of a
        chunk, as arrays."""
        files, unit = self.files, cols.unit
        per_cell = [c.get(key) or [] if c.get("status") == "ok" else [] for c in cells]
        if not any(per_cell):
            return
        parts: list[list[tuple[Any, ...]]] = []
        for i, obj in enumerate(per_cell):
            try:
                parts.append(_unit_tuples(obj, unit, specs[i]))
            except _BadUnits as e:
                raise OodmlError(f"cell file {files[offset + i]!r} has {e.args[0].format(key=key)}; delete it and "
                                 "rerun `oodml run`") from None
        counts = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        if not counts.sum():
            return
        local = np.repeat(np.arange(len(cells)), counts)
        method, k, label, metric, value, n_q_list = zip(*itertools.chain.from_iterable(parts))
        n_q = (pd.to_numeric(pd.Series(n_q_list, dtype=object), errors="coerce").to_numpy(float) if unit == "class"
               else np.full(len(local), np.nan))
        k_num = pd.to_numeric(pd.Series(k, dtype=object), errors="coerce").to_numpy(float)
        values = pd.to_numeric(pd.Series(value, dtype=object), errors="coerce").to_numpy(float)
        is_class = np.array([v is not None for v in label]) if unit == "class" else np.zeros(len(local), bool)
        bad_unit = (np.isnan(values) | (values < 0) | (values > 1) | np.isnan(k_num) | (is_class & ~(n_q > 0)))
        if bad_unit.any():
            i = int(np.flatnonzero(bad_unit)[0])
            raise OodmlError(f"cell file {files[offset + local[i]]!r} has a per-unit value that is missing, outside "
                             "[0, 1] or without a positive n_queries; delete it and rerun `oodml run`")
        cols.cell.append((local + offset).astype(np.int64))
        cols.method.append(self.methods.encode(method))
        cols.k.append(k_num.astype(np.int64))
        if unit == "class":
            codes = self.classes.encode(label)
            cols.label.append(np.where(is_class, codes, -1).astype(np.int32))
        else:
            cols.label.append(pd.to_numeric(pd.Series(label, dtype=object), errors="coerce").to_numpy(float))
        cols.metric.append(self.metrics.encode(metric))
        cols.value.append(values)
        cols.n_queries.append(n_q)

    def rows(self) -> tuple[pd.DataFrame, np.ndarray]:
        """All rows as one DataFrame (numeric columns converted), plus the index of the cell each came from."""
        row_cell = np.concatenate(self.row_cells) if self.row_cells else np.zeros(0, np.int64)
        if not self.row_parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in ROW_COLUMNS}), row_cell
        rows = (pd.concat(self.row_parts, ignore_index=True) if len(self.row_parts) > 1
                else self.row_parts[0].reset_index(drop=True))
        self.row_parts = []
        for col in _FLOAT_COLUMNS:
            rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
        for col in _INT_COLUMNS:
            num = pd.to_numeric(rows[col], errors="coerce")
            if num.isna().any():
                i = int(np.flatnonzero(num.isna().to_numpy())[0])
                raise OodmlError(f"cell file {self.files[row_cell[i]]!r} has a row without an integer {col}; "
                                 "delete it and rerun `oodml run`")
            rows[col] = num.astype(np.int64)
        return rows, row_cell

    def units(self, table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
        """Every per-unit value of the store (`UNIT_COLUMNS`), episodes first, then classes; old cell files
        without unit lists add none. Per-cell columns are categoricals over the cell's codes."""
        parts = [cols for cols in self.unit_lists.values() if cols.cell]
        if not parts:
            return empty_units()

        def cat(name: str) -> np.ndarray:  # the chunk parts are dropped as soon as they are joined
            joined = np.concatenate([a for c in parts for a in getattr(c, name)])
            for c in parts:
                getattr(c, name).clear()
            return joined

        is_class = np.concatenate([np.full(sum(map(len, c.cell)), c.unit == "class") for c in parts])
        label = cat("label").astype(float)
        idx = cat("cell")
        hashes = rows.drop_duplicates("cell_id").set_index("cell_id")["split_hash"] if len(rows) else pd.Series()
        per_cell_hash = table["cell_id"].map(hashes) if len(hashes) else pd.Series(np.nan, index=table.index)
        episode = pd.array(np.where(is_class, 0, np.nan_to_num(label, nan=0)).astype(np.int64), dtype="Int64")
        episode[is_class | np.isnan(label)] = pd.NA
        class_codes = np.where(is_class & (label >= 0), np.nan_to_num(label, nan=-1), -1).astype(np.int32)
        out = pd.DataFrame({
            "cell_id": _per_cell(table["cell_id"], idx),
            "dataset": _per_cell(table["dataset"], idx),
            "method": self.methods.categorical(cat("method")),
            "method_family": _per_cell(table["method_family"], idx),
            "split_level": pd.to_numeric(table["split_level"], errors="coerce").to_numpy()[idx],
            "split_hash": _per_cell(per_cell_hash, idx),
            "k_shot": cat("k"),
            "seed": pd.to_numeric(table["seed"], errors="coerce").to_numpy()[idx],
            "metric": self.metrics.categorical(cat("metric")),
            "episode": episode,
            "class": self.classes.categorical(class_codes),
            "value": cat("value"),
            "n_queries": cat("n_queries"),
        }, copy=False)
        return out


def _per_cell(values: pd.Series, idx: np.ndarray) -> pd.Categorical:
    """A per-cell column repeated for each unit of the cell, as a categorical (sorted categories; None -> NaN)."""
    codes, uniques = pd.factorize(values.astype(object).to_numpy(), sort=True)
    return pd.Categorical.from_codes(codes[idx], categories=pd.Index([str(u) for u in uniques]))


def _dedup_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Equal strings of one chunk's object columns share one object (a cell's rows repeat their provenance)."""
    for col in frame.columns:
        if frame[col].dtype == object:
            codes, uniques = pd.factorize(frame[col].to_numpy(), use_na_sentinel=True)
            if len(uniques) < len(frame) // 2:
                frame[col] = pd.Series(np.where(codes >= 0, np.asarray(uniques, dtype=object)[codes], None)
                                       if len(uniques) else frame[col].to_numpy(), dtype=object)
    return frame


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
    """Read and parse files (orjson when installed; the stdlib parser for files with NaN literals)."""
    cells = [_parse_one(f, _read_bytes(f)) for f in files]
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
    except RecursionError:
        raise OodmlError(f"cell file {path!r} nests too deeply to be a cell file; delete it and rerun `oodml run`") \
            from None


def _bad_columns(flat: list[Any], row_cell: np.ndarray, files: list[str]) -> str:
    want = set(ROW_COLUMNS)
    for i, row in enumerate(flat):
        have = set(row) if isinstance(row, Mapping) else set()
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            return (f"cell file {files[row_cell[i]]!r} has a row with the wrong columns (missing {missing}, "
                    f"unexpected {extra}); it was written by another oodml version: delete it and rerun `oodml run`")
    return "cell rows do not match oodml.schema.ROW_COLUMNS; rerun `oodml run`"  # pragma: no cover


def _cell_table(acc: _Accumulator, files: list[str], rows: pd.DataFrame, row_cell: np.ndarray) -> pd.DataFrame:
    """One row per cell file; the grid key comes from its first row, else from its config."""
    n = len(files)
    table = pd.DataFrame({
        "cell_id": acc.cell_ids,
        "status": acc.statuses,
        "error": acc.errors,
        "file": files,
        "n_rows": np.bincount(row_cell, minlength=n),
    })
    first = pd.DataFrame({"_cell": row_cell}).drop_duplicates("_cell")
    keyed = rows.loc[first.index, list(KEY_COLUMNS)].set_axis(first["_cell"].to_numpy())
    for col in KEY_COLUMNS:
        table[col] = keyed[col].reindex(table.index).astype(object)
    for i, config in acc.rowless_configs.items():  # row-less cells only (errors); few
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
    """Statuses are known; ok rows have a metric and a value in [0, 1] (docs/formats.md)."""
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
