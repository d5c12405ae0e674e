"""Reading and validating the cell store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oodml.errors import OodmlError
from oodml.report.store import read_store
from oodml.schema import ROW_COLUMNS
from tests.report.conftest import make_row, write_cell, write_grid


def test_reads_every_row_with_exact_columns(grid_store: Path) -> None:
    files = sorted((grid_store / "cells").glob("*.json"))
    expected = sum(len(json.loads(f.read_text())["rows"]) for f in files)
    store = read_store(grid_store)
    assert tuple(store.rows.columns) == ROW_COLUMNS
    assert len(store.rows) == expected == 5 * 4 * 3 * (2 * 3 + 2)  # recall@1+map@r everywhere, accuracy at k>0
    assert len(store.cells) == len(files) == 5 * 4 * 3
    assert set(store.cells["status"]) == {"ok"}
    assert (store.cells["n_rows"] > 0).all()
    assert store.rows["k_shot"].dtype == np.int64 and store.rows["value"].dtype == float
    assert store.datasets == ["synthetic"]


@pytest.mark.parametrize("make", ["missing", "empty", "no_cells"])
def test_missing_or_empty_folder_says_run(tmp_path: Path, make: str) -> None:
    results = tmp_path / "results"
    if make != "missing":
        results.mkdir()
    if make == "no_cells":
        (results / "cells").mkdir()
    with pytest.raises(OodmlError, match="oodml run"):
        read_store(results)


def _one_cell(results: Path, **kw: object) -> Path:
    row = make_row(dataset="d", method="m", family="dml", level=1, k=0, seed=0, metric="recall@1", value=0.5)
    row.update(kw)
    return write_cell(results, [row])


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    _one_cell(tmp_path)
    bad = tmp_path / "cells" / "zzz.json"
    bad.write_text("{not json")
    with pytest.raises(OodmlError, match="zzz.json"):
        read_store(tmp_path)


@pytest.mark.parametrize(("field", "value", "what"), [
    ("value", float("nan"), "NaN"), ("value", None, "NaN"), ("value", 1.5, r"outside \[0, 1\]"),
    ("value", -0.1, r"outside \[0, 1\]"), ("status", "done", "status"),
])
def test_invalid_ok_rows_are_rejected(tmp_path: Path, field: str, value: object, what: str) -> None:
    path = _one_cell(tmp_path, **{field: value})
    with pytest.raises(OodmlError, match=what) as e:
        read_store(tmp_path)
    assert path.name in str(e.value) and "\n" not in str(e.value)


def test_nan_value_allowed_in_error_rows(tmp_path: Path) -> None:
    _one_cell(tmp_path, status="error", value=float("nan"), error="boom")
    store = read_store(tmp_path)
    assert store.rows["status"].tolist() == ["error"]


def test_wrong_columns_are_rejected(tmp_path: Path) -> None:
    row = make_row(dataset="d", method="m", family="dml", level=1, k=0, seed=0, metric="recall@1", value=0.5)
    del row["peak_mem_mb"]
    row["extra"] = 1
    write_cell(tmp_path, [row])
    with pytest.raises(OodmlError, match="peak_mem_mb"):
        read_store(tmp_path)


def test_rowless_error_cell_takes_its_key_from_config(tmp_path: Path) -> None:
    _one_cell(tmp_path)
    write_cell(tmp_path, [], status="error", error="OOM", cid="e1",
               config={"cell": {"dataset": "d", "method": "m", "split_level": 2, "k_shot": 0, "seed": 1}})
    store = read_store(tmp_path)
    err = store.cells[store.cells["cell_id"] == "e1"].iloc[0]
    assert (err["dataset"], err["method"], err["split_level"], err["k_shot"], err["seed"]) == ("d", "m", 2, 0, 1)
    assert err["n_rows"] == 0 and err["status"] == "error"


def test_rows_follow_file_name_order(tmp_path: Path) -> None:
    write_grid(tmp_path, levels=(1, 2), ks=(0, 2), seeds=(0, 1))
    files = sorted((tmp_path / "cells").glob("*.json"))
    expected = [(r["cell_id"], r["k_shot"], r["metric"]) for f in files for r in json.loads(f.read_text())["rows"]]
    rows = read_store(tmp_path).rows
    assert list(zip(rows["cell_id"], rows["k_shot"], rows["metric"])) == expected
