"""Adding a metric is one registration: a registered retrieval metric appears in every cell (zero-shot, per class,
and k-shot) and in the leaderboard."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.eval.metrics import FEW_SHOT, METRICS, ZERO_SHOT, MetricInfo, matches
from oodml.registry import Entry
from oodml.report import build_report
from oodml.runner import run_grid
from oodml.schema import unit_entries
from tests.runner.fakes import fake_methods, write_inputs


def precision_at_2(knn_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Share of the first two neighbours that have the query's label."""
    return matches(knn_labels, query_labels)[:, :2].mean(axis=1)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    info = MetricInfo("precision@2", "precision of the first two neighbours", "retrieval", (ZERO_SHOT, FEW_SHOT),
                      neighbours=lambda max_r: 2)
    monkeypatch.setitem(METRICS._entries, info.name, Entry(info, precision_at_2))
    with fake_methods():
        yield


def test_a_registered_metric_reaches_cells_and_leaderboard(registered: None, tmp_path: Path) -> None:
    feats, splits = write_inputs(tmp_path, ks=(2,), levels=2)
    cfg = build_run_cfg(dict(method="fake_proj", features=str(feats), splits=str(splits), shifts="1..2", k="0,2",
                             seeds="0", results=str(tmp_path / "r"), workers=1))
    assert run_grid(cfg) == 0
    cells = [json.loads(p.read_text()) for p in sorted((tmp_path / "r" / "cells").glob("*.json"))]
    assert len(cells) == 2
    for c in cells:
        mine = [r for r in c["rows"] if r["metric"] == "precision@2" and r["status"] == "ok"]
        assert {r["k_shot"] for r in mine} == {0, 2} and all(0 <= r["value"] <= 1 for r in mine)
        assert {e["metric"] for e in unit_entries(c["episodes"])} >= {"precision@2"}
        assert any(x["metric"] == "precision@2" for x in unit_entries(c["classes"]))
    build_report(results=tmp_path / "r", metric="precision@2")
    dataset = cells[0]["rows"][0]["dataset"]
    with (tmp_path / "r" / dataset / "leaderboard_k0.csv").open() as fh:
        board = list(csv.DictReader(fh))
    assert {r["metric"] for r in board} == {"precision@2"}
    stored = [r["value"] for c in cells for r in c["rows"]
              if r["metric"] == "precision@2" and r["k_shot"] == 0 and r["method"] == "fake_proj"]
    row = next(r for r in board if r["method"] == "fake_proj")
    assert float(row["mean"]) == pytest.approx(np.mean(stored), abs=1e-12)
    # the report knows metric names only from the cells (the registry is their one source)
    with pytest.raises(OodmlError, match="did you mean precision@2"):
        build_report(results=tmp_path / "r", metric="precision@3")
