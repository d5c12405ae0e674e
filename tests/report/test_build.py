"""Whole reports: several datasets in one store, a self-contained HTML page, an all-skipped dataset."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from oodml.report import build_report
from tests.report.conftest import make_row, write_cell, write_grid


def test_each_dataset_gets_its_own_folder_and_rows(tmp_path: Path) -> None:
    write_grid(tmp_path, dataset="d1", levels=(1, 2), ks=(0,), seeds=(0,), methods={"a": "dml", "b": "dml"})
    write_grid(tmp_path, dataset="d2", levels=(1, 2, 3), ks=(0, 2), seeds=(0, 1), methods={"c": "adapted"}, seed=1)
    paths = build_report(results=tmp_path, metric=None)
    assert {p.parent.name for p in paths} == {"d1", "d2"}
    for name, n_rows, methods in (("d1", 2 * 2 * 2, {"a", "b"}), ("d2", 3 * 2 * (2 + 3), {"c"})):
        rows = pd.read_csv(tmp_path / name / "all.csv")
        assert len(rows) == n_rows and set(rows["dataset"]) == {name} and set(rows["method"]) == methods
    assert not (tmp_path / "d1" / "leaderboard_k2.csv").exists()
    assert list(pd.read_csv(tmp_path / "d2" / "levels.csv")["level"]) == [1, 2, 3]


def test_html_is_self_contained(grid_report: tuple[Path, list[Path]]) -> None:
    html = (grid_report[0] / "synthetic" / "report.html").read_text()
    assert html.count("<svg") == 2 and html.count("<table>") >= 5
    assert not re.search(r"<(img|link|script)\b", html)
    assert not re.search(r"""(src|href)=["'](https?:|//|[^"'#]*\.(png|svg|css|js))""", html)
    md = (grid_report[0] / "synthetic" / "report.md").read_text()
    assert "](curves_recall@1.png)" in md and "## Provenance" in md and "60 ok, 0 error, 0 skipped" in md


def test_all_skipped_dataset_reports_without_ranking(tmp_path: Path) -> None:
    for lv in (1, 2):
        write_cell(tmp_path, [make_row(dataset="sk", method="baseline", family="baseline", level=lv, k=0, seed=0,
                                       metric="recall@1", value=None, status="skipped")], status="skipped")
    names = {p.name for p in build_report(results=tmp_path, metric=None)}
    assert not any(n.startswith("leaderboard_") for n in names) and {"report.md", "report.html"} <= names
    assert "Nothing to rank" in (tmp_path / "sk" / "report.md").read_text()
