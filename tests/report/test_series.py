"""A row is one configuration: two settings of a method are two series everywhere; two split files at one level are
refused; at k = 0 an adapted method is its source model and is left out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oodml.cli import app
from oodml.report import build_report
from oodml.report.build import aggregate
from oodml.report.store import read_store
from tests.report.conftest import make_row, write_cell


def _cell(results: Path, *, method: str, seed: int, value: float, params: str = "{}", level: int = 1, k: int = 0,
          family: str = "dml", split_hash: str | None = None) -> None:
    row = make_row(dataset="s", method=method, family=family, level=level, k=k, seed=seed, metric="recall@1",
                   value=value)
    row["method_params"] = params
    row["cell_id"] = f"{method}-{params}-{level}-{k}-{seed}-{split_hash}".replace('"', "").replace(" ", "")
    if split_hash:
        row["split_hash"] = split_hash
    write_cell(results, [row], config={"methods": [method], "ks": [k]})


def test_two_settings_of_one_method_are_two_series(tmp_path: Path) -> None:
    for s in range(3):
        _cell(tmp_path, method="supcon", seed=s, value=0.70 + 0.01 * s, params='{"lr": 0.001, "temperature": 0.1}')
        _cell(tmp_path, method="supcon", seed=s, value=0.90 + 0.01 * s, params='{"lr": 0.001, "temperature": 0.05}')
        _cell(tmp_path, method="margin", seed=s, value=0.5, params='{"lr": 0.001}')
    build_report(results=tmp_path, metric=None)
    board = pd.read_csv(tmp_path / "s" / "leaderboard_k0.csv").set_index("method")
    assert sorted(board.index) == ["margin", "supcon[temperature=0.05]", "supcon[temperature=0.1]"]
    assert board.loc["supcon[temperature=0.05]", "mean"] == pytest.approx(0.91)  # never the average 0.81
    assert board.loc["supcon[temperature=0.1]", "n_seeds"] == 3
    r = CliRunner().invoke(app, ["compare", "supcon", "margin", "--results", str(tmp_path)])
    assert r.exit_code == 2 and "ambiguous" in r.stderr and "supcon[temperature=0.05], supcon[temperature=0.1]" in r.stderr
    r = CliRunner().invoke(app, ["compare", "supcon[temperature=0.05]", "margin", "--results", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "supcon[temperature=0.05] > margin over levels" in r.stdout


def test_two_split_files_at_one_level_are_refused(tmp_path: Path) -> None:
    _cell(tmp_path, method="a", seed=0, value=0.78, split_hash="aaa111")
    _cell(tmp_path, method="a", seed=1, value=0.98, split_hash="bbb222")
    r = CliRunner().invoke(app, ["report", "--results", str(tmp_path)])
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert line.startswith("error: s: level 1 holds results of 2 split files") and "aaa111, bbb222" in line
    assert len(line.splitlines()) == 1


def test_adapted_methods_are_left_out_at_k0(tmp_path: Path) -> None:
    for s in range(2):
        for k in (0, 5):
            _cell(tmp_path, method="margin", seed=s, value=0.5, k=k)
            _cell(tmp_path, method="adapted_margin", family="adapted", seed=s, value=0.5 + (0.1 if k else 0), k=k)
    t = aggregate(read_store(tmp_path), "s", None)
    assert list(t.leaderboards[0]["method"]) == ["margin"] and t.same_at_zero == {"adapted_margin": "margin"}
    assert sorted(t.leaderboards[5]["method"]) == ["adapted_margin", "margin"]
    assert (t.error_reduction["k_shot"] > 0).all() and len(t.error_reduction)
    build_report(results=tmp_path, metric=None)
    assert "`adapted_margin` = `margin`" in (tmp_path / "s" / "report.md").read_text()
