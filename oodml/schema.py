"""The tidy result-row schema shared by the runner (writer) and the reporter (reader): docs/formats.md, results folder."""

from __future__ import annotations

from collections.abc import Mapping

SCHEMA_VERSION = 1

#: Columns of every result row, in this order, in `all.csv` and in the cell files' `rows`.
ROW_COLUMNS: tuple[str, ...] = (
    "schema_version", "oodml_version", "git_sha", "created_at",
    "cell_id",
    "dataset", "backbone", "feature_hash",
    "method", "method_family", "method_params",
    "split_level", "split_fid", "n_train_classes", "n_test_classes", "split_hash",
    "k_shot", "n_episodes", "seed",
    "metric", "value", "episode_std", "n_queries", "knn_k", "knn_backend",
    "status", "error", "wall_time_s", "peak_mem_mb", "device",
    "config_hash", "config_json",
)

STATUSES: tuple[str, ...] = ("ok", "error", "skipped")

#: Per-unit tables of a cell file (issue 17), written as `{"columns": [...], "rows": [[...], ...]}`, one row per
#: (embedding variant, k, unit, metric): `episodes` for k-shot episodes, `classes` for zero-shot test classes. Cell
#: files written before this layout hold a list of objects with these keys (episodes also with the cell's key
#: columns, `method` and `k_shot`); readers take both.
EPISODE_UNIT_COLUMNS: tuple[str, ...] = ("variant", "k", "episode", "metric", "value")
CLASS_UNIT_COLUMNS: tuple[str, ...] = ("variant", "k", "class", "metric", "value", "n_queries")


def unit_table(entries: list[dict[str, object]], columns: tuple[str, ...]) -> dict[str, object]:
    """Per-unit entries (dicts with at least `columns`) as the cell file's table: the column names once, then one
    list of values per entry (an Omniglot cell file: 261 KB, against 567 KB with a list of objects)."""
    return {"columns": list(columns), "rows": [[e[c] for c in columns] for e in entries]}


def is_unit_table(obj: object) -> bool:
    """True for a per-unit table as `unit_table` writes it (a mapping with list `columns` and list `rows`)."""
    return isinstance(obj, Mapping) and isinstance(obj.get("columns"), list) and isinstance(obj.get("rows"), list)


def unit_entries(obj: object) -> list[dict[str, object]]:
    """A cell file's per-unit list as objects, from either layout (a table, or the older list of objects).

    Raises:
        ValueError: `obj` is neither layout.
    """
    if isinstance(obj, list):
        return [dict(e) for e in obj]  # type: ignore[call-overload]
    if is_unit_table(obj):
        columns = obj["columns"]  # type: ignore[index]
        return [dict(zip(columns, r, strict=True)) for r in obj["rows"]]  # type: ignore[index]
    raise ValueError("a per-unit list is neither a list nor a {columns, rows} table")
