"""Per-unit values as tables in the cell file (`{"columns", "rows"}`): the runner's layout reads to the same unit
table as the older list of objects, is written one row per line, and malformed tables name their file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from oodml.errors import OodmlError
from oodml.report import read_store
from oodml.runner.store import dumps_cell, finished_cell
from oodml.schema import CLASS_UNIT_COLUMNS, EPISODE_UNIT_COLUMNS, unit_entries, unit_table
from tests.report.conftest import make_row, write_unit_cell


def _as_tables(results: Path) -> None:
    """Rewrite every cell file of `results` with its unit lists as tables (what the runner now writes)."""
    for p in (results / "cells").glob("*.json"):
        cell = json.loads(p.read_text())
        for key, cols in (("episodes", EPISODE_UNIT_COLUMNS), ("classes", CLASS_UNIT_COLUMNS)):
            if key in cell:
                entries = [{**e, "variant": e.get("variant", ""), "k": e.get("k", e.get("k_shot"))}
                           for e in cell[key]]
                # episodes of old files name the whole method label; a table names the variant only
                cell[key] = unit_table(entries, cols)
        p.write_text(dumps_cell(cell))


def _store(results: Path) -> Path:
    write_unit_cell(results, method="m", level=1, seed=0, k=0, values=[1.0, 0.0, 0.5], n_queries=[3, 1, 4],
                    classes=["001.A", "002.B", "003.C"])
    write_unit_cell(results, method="m", variant="ens", level=1, seed=1, k=0, values=[0.2, 0.4], n_queries=[1, 2])
    write_unit_cell(results, method="m", level=2, seed=0, k=2, values=[0.1, 0.3, 0.5])
    return results


def test_tables_read_as_the_older_lists(tmp_path: Path) -> None:
    old = read_store(_store(tmp_path / "old")).units
    new_root = _store(tmp_path / "new")
    _as_tables(new_root)
    assert json.loads((next((new_root / "cells").glob("*.json"))).read_text())["classes"]["columns"] \
        == list(CLASS_UNIT_COLUMNS)
    new = read_store(new_root).units
    assert len(old) == 8
    pd.testing.assert_frame_equal(old.reset_index(drop=True), new.reset_index(drop=True))


def test_dumps_cell_round_trips_and_keeps_rows_on_one_line() -> None:
    entries = [{"variant": "", "k": 0, "class": f"Alphabet/character{i:02d}", "metric": m, "value": 0.25 + i / 100,
                "n_queries": 19} for i in range(40) for m in ("recall@1", "map@r")]
    payload: dict[str, Any] = {"cell_id": "c", "status": "ok", "rows": [make_row(
        dataset="d", method="m", family="dml", level=1, k=0, seed=0, metric="recall@1", value=0.5)],
        "episodes": unit_table([], EPISODE_UNIT_COLUMNS), "classes": unit_table(entries, CLASS_UNIT_COLUMNS)}
    text = dumps_cell(payload)
    assert json.loads(text) == payload
    assert unit_entries(json.loads(text)["classes"]) == entries
    lines = text.splitlines()
    assert '  ["",0,"Alphabet/character00","recall@1",0.25,19],' in lines  # one unit per line
    old = json.dumps({**payload, "classes": entries}, indent=1)
    assert len(text) < 0.6 * len(old)
    assert dumps_cell({"a": 1}) == '{\n "a": 1\n}\n'


def test_finished_cell_takes_both_layouts_and_nothing_else() -> None:
    row = {**make_row(dataset="d", method="m", family="dml", level=1, k=0, seed=0, metric="recall@1", value=0.5),
           "cell_id": "c"}
    base = {"cell_id": "c", "status": "ok", "config": {"ks": [0]}, "rows": [row]}
    assert finished_cell({**base, "classes": unit_table([], CLASS_UNIT_COLUMNS)}, "c")
    assert finished_cell({**base, "classes": []}, "c")
    assert not finished_cell({**base, "classes": {"rows": []}}, "c")
    assert not finished_cell({**base, "episodes": "x"}, "c")


@pytest.mark.parametrize("table, what", [
    ({"columns": ["variant", "k", "class", "metric", "value"], "rows": [["", 0, "a", "recall@1", 0.5]]},
     "without variant, k, class, metric, value, n_queries"),
    ({"columns": list(CLASS_UNIT_COLUMNS), "rows": [["", 0, "a"]]}, "without variant"),
    ({"columns": list(CLASS_UNIT_COLUMNS)}, "neither a list nor"),
    ("text", "neither a list nor"),
])
def test_malformed_tables_name_the_file(tmp_path: Path, table: object, what: str) -> None:
    p = write_unit_cell(tmp_path, method="m", level=1, seed=0, k=0, values=[0.5], n_queries=[2])
    cell = json.loads(p.read_text())
    cell["classes"] = table
    p.write_text(json.dumps(cell))
    with pytest.raises(OodmlError, match=f"{p.name}.*{what}"):
        read_store(tmp_path)


def test_unit_entries_rejects_other_objects() -> None:
    with pytest.raises(ValueError, match="neither"):
        unit_entries({"columns": ["a"]})
    with pytest.raises(ValueError):
        unit_entries({"columns": ["a", "b"], "rows": [[1]]})  # a row shorter than its columns


def test_dumps_cell_is_indent_1_json_outside_the_tables() -> None:
    payload = {"cell_id": "c", "config": {"ks": [0, 2], "nested": {"a": [1, 2]}}, "error": None, "x": "a\nb"}
    assert dumps_cell(payload) == json.dumps(payload, indent=1) + "\n"
    assert dumps_cell({}) == "{}\n"
