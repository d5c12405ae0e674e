"""Leaderboards, few-shot gain and error reduction against an independent reader of the cell files."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oodml.errors import OodmlError
from oodml.report import build_report
from oodml.report.leaderboard import area_under_curve, choose_metrics
from tests.report.conftest import FIDS, make_row, write_cell


def _independent_means(results: Path, metric: str) -> dict[tuple[str, int, int], list[float]]:
    """(method, k, level) -> ok values over seeds, read with plain json and loops."""
    out: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for f in sorted((results / "cells").glob("*.json")):
        for row in json.loads(f.read_text())["rows"]:
            if row["status"] == "ok" and row["metric"] == metric:
                out[(row["method"], row["k_shot"], row["split_level"])].append(row["value"])
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_leaderboard_cell_is_the_mean_of_the_stored_values(grid_report: tuple[Path, list[Path]]) -> None:
    grid_store = grid_report[0]
    truth = _independent_means(grid_store, "recall@1")
    for k in (0, 2, 5):
        board = _read_csv(grid_store / "synthetic" / f"leaderboard_k{k}.csv")
        assert list(board[0])[:19] == ["rank", "method", "family", "metric", "mean", "ci_low", "ci_high", "auc",
                                       "auc_ci_low", "auc_ci_high", "n_seeds", "interval_note", "vs_best_p",
                                       "vs_best_p_holm", "tied_with_best", "L1", "L2", "L3", "L4"]
        # cell files without per-unit values: the seed-level intervals need only each seed's value
        assert all(row["ci_low"] != "" and row["L1_ci_low"] != "" and row["interval_note"] == "" for row in board)
        assert all((row["vs_best_p"] == "") == (row["rank"] == "1") for row in board)
        assert len(board) == (4 if k == 0 else 5)  # at k = 0 adapted_proto is protonet: left out
        for row in board:
            assert row["metric"] == "recall@1" and row["n_seeds"] == "3" and row["n_errors"] == "0"
            per_level = []
            for lv in (1, 2, 3, 4):
                vals = truth[(row["method"], k, lv)]
                assert len(vals) == 3
                assert float(row[f"L{lv}"]) == pytest.approx(sum(vals) / len(vals), abs=1e-12)
                per_level.append(sum(vals) / len(vals))
            assert float(row["mean"]) == pytest.approx(sum(per_level) / 4, abs=1e-12)
            x = [FIDS[lv] for lv in (1, 2, 3, 4)]
            area = sum((x[i + 1] - x[i]) * (per_level[i] + per_level[i + 1]) / 2 for i in range(3))
            assert float(row["auc"]) == pytest.approx(area / (x[-1] - x[0]), abs=1e-12)
        means = [float(r["mean"]) for r in board]
        assert means == sorted(means, reverse=True)
        assert [int(r["rank"]) for r in board] == list(range(1, len(board) + 1))


def test_explicit_metric_is_used_for_every_k_that_has_it(grid_store: Path) -> None:
    paths = build_report(results=grid_store, metric="accuracy")
    names = {p.name for p in paths}
    assert "leaderboard_k0.csv" not in names  # no accuracy at k = 0
    assert {"leaderboard_k2.csv", "leaderboard_k5.csv", "curves_accuracy.png", "curves_accuracy.svg"} <= names
    truth = _independent_means(grid_store, "accuracy")
    board = _read_csv(grid_store / "synthetic" / "leaderboard_k5.csv")
    row = board[0]
    assert row["metric"] == "accuracy"
    assert float(row["L3"]) == pytest.approx(np.mean(truth[(row["method"], 5, 3)]), abs=1e-12)


def test_default_metric_per_k() -> None:
    ok = pd.DataFrame({"k_shot": [0, 0, 5, 5, 10], "metric": ["recall@1", "map@r", "accuracy", "map@r", "nmi"]})
    assert choose_metrics(ok, [0, 5, 10], None) == {0: "recall@1", 5: "accuracy", 10: "nmi"}
    both = pd.DataFrame({"k_shot": [5, 5], "metric": ["accuracy", "recall@1"]})
    assert choose_metrics(both, [5], None) == {5: "recall@1"}
    with pytest.raises(OodmlError, match="did you mean recall@1"):
        choose_metrics(ok, [0], "recal@1")
    with pytest.raises(OodmlError, match="not in the results"):
        choose_metrics(ok, [0], "recall@8")


def test_auc_by_hand() -> None:
    fids = np.array([30.0, 10.0, 20.0])  # unsorted on purpose
    vals = np.array([[0.2, 0.6, 0.4], [0.5, np.nan, 0.5], [np.nan, 0.7, np.nan], [np.nan] * 3])
    out = area_under_curve(fids, vals)
    # row 0 sorted by fid: (10, .6) (20, .4) (30, .2): area = 10*.5 + 10*.3 = 8, range 20
    assert out[0] == pytest.approx(0.4)
    assert out[1] == pytest.approx(0.5)  # levels 20 and 30 only
    assert out[2] == pytest.approx(0.7)  # one level: its value
    assert math.isnan(out[3])


def _hand_store(results: Path) -> None:
    """Two methods x 2 levels x seeds 0,1 at k=0; `b` misses seed 1 at level 2 and has an error cell there."""
    vals = {("a", 1, 0): 0.6, ("a", 1, 1): 0.8, ("a", 2, 0): 0.4, ("a", 2, 1): 0.6,
            ("b", 1, 0): 0.7, ("b", 1, 1): 0.7, ("b", 2, 0): 0.5}
    for (m, lv, s), v in vals.items():
        write_cell(results, [make_row(dataset="hand", method=m, family="dml", level=lv, k=0, seed=s,
                                      metric="recall@1", value=v)])
    err = make_row(dataset="hand", method="b", family="dml", level=2, k=0, seed=2, metric=None,
                   value=None, status="error", error="RuntimeError: diverged\nTraceback ...")
    write_cell(results, [err], status="error", error="RuntimeError: diverged\nTraceback ...")
    skip = make_row(dataset="hand", method="c", family="baseline", level=1, k=0, seed=0, metric="recall@1",
                    value=None, status="skipped")
    write_cell(results, [skip], status="skipped")


def test_error_cell_and_missing_seed_are_counted_not_averaged(tmp_path: Path) -> None:
    _hand_store(tmp_path)
    build_report(results=tmp_path, metric=None)
    out = tmp_path / "hand"
    board = {r["method"]: r for r in _read_csv(out / "leaderboard_k0.csv")}
    assert set(board) == {"a", "b"}  # skipped-only method c is not ranked
    a, b = board["a"], board["b"]
    assert float(b["L2"]) == pytest.approx(0.5) and b["n_L2"] == "1" and b["n_L1"] == "2"
    assert b["n_errors"] == "1" and a["n_errors"] == "0"
    assert float(b["mean"]) == pytest.approx((0.7 + 0.5) / 2)
    assert float(a["mean"]) == pytest.approx((0.7 + 0.5) / 2)
    assert a["rank"] == b["rank"] == "1"  # a tie shares the rank
    md = (out / "report.md").read_text()
    assert "0.500 (n=1, 1 error)" in md
    assert "7 ok, 1 error, 1 skipped" in md
    assert "RuntimeError: diverged" in md and "Traceback" not in md
    html = (out / "report.html").read_text()
    assert "0.500 (n=1, 1 error)" in html and "<svg" in html


def test_ranks_with_ties_and_order(tmp_path: Path) -> None:
    for m, v in {"w": 0.3, "x": 0.9, "y": 0.5, "z": 0.5}.items():
        write_cell(tmp_path, [make_row(dataset="t", method=m, family="dml", level=1, k=0, seed=0,
                                       metric="recall@1", value=v)])
    build_report(results=tmp_path, metric=None)
    board = _read_csv(tmp_path / "t" / "leaderboard_k0.csv")
    assert [(r["rank"], r["method"]) for r in board] == [("1", "x"), ("2", "y"), ("2", "z"), ("4", "w")]


def _scott_store(results: Path) -> None:
    vals = {"transfer": ("transfer", 0.6), "proto": ("fewshot", 0.8), "adapted_proto": ("adapted", 0.9),
            "adapted_hist": ("adapted", 0.7)}
    for m, (fam, v) in vals.items():
        for k in (0, 5):
            rows = [make_row(dataset="s", method=m, family=fam, level=1, k=k, seed=0, metric="recall@1",
                             value=v - (0.2 if k == 0 else 0.0))]
            if k:
                rows.append(make_row(dataset="s", method=m, family=fam, level=1, k=k, seed=0, metric="accuracy",
                                     value=v))
            write_cell(results, rows)


def test_error_reduction_and_gain_by_hand(tmp_path: Path) -> None:
    _scott_store(tmp_path)
    build_report(results=tmp_path, metric=None)
    red = pd.read_csv(tmp_path / "s" / "error_reduction.csv")
    at5 = red[red["k_shot"] == 5].set_index("method")
    # best non-adapted at k=5 is proto (0.8, error 0.2); adapted_proto error 0.1 -> 50% less; adapted_hist 0.3 -> -50%
    assert set(at5["reference_method"]) == {"proto"}
    assert at5.loc["adapted_proto", "error_reduction"] == pytest.approx(0.5)
    assert at5.loc["adapted_hist", "error_reduction"] == pytest.approx(-0.5)
    gain = pd.read_csv(tmp_path / "s" / "gain_recall@1.csv").set_index("method")
    # adapted vs unadapted on the same k-shot queries: adapted_proto (0.9) vs proto (0.8); adapted_hist has no
    # unadapted counterpart here; the zero-shot rows (another gallery) play no part
    assert list(gain.index) == ["adapted_proto"] and gain.loc["adapted_proto", "unadapted"] == "proto"
    assert gain.loc["adapted_proto", "gain"] == pytest.approx(0.1)
    assert (gain["k_shot"] == 5).all()


def test_method_missing_a_level_is_marked(tmp_path: Path) -> None:
    for m, lv, v in (("full", 1, 0.5), ("full", 2, 0.3), ("part", 1, 0.9)):
        write_cell(tmp_path, [make_row(dataset="p", method=m, family="dml", level=lv, k=0, seed=0,
                                       metric="recall@1", value=v)])
    build_report(results=tmp_path, metric=None)
    board = {r["method"]: r for r in _read_csv(tmp_path / "p" / "leaderboard_k0.csv")}
    assert board["part"]["n_levels"] == "1" and board["full"]["n_levels"] == "2" and board["part"]["L2"] == ""
    assert float(board["part"]["mean"]) == pytest.approx(0.9)  # over its one level, and said so in the report
    assert "0.900 (1/2 levels)" in (tmp_path / "p" / "report.md").read_text()
