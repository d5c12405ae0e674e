"""End to end: a store written by the real runner (fake methods on blobs), reported, checked by hand."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from oodml.config import build_run_cfg
from oodml.report import build_report
from oodml.runner import run_grid
from tests.runner.fakes import fake_methods, write_inputs


@pytest.fixture(scope="module")
def runner_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("runner_store")
    feats, splits = write_inputs(tmp, ks=(2,), levels=3)
    cfg = build_run_cfg(dict(method="fake_proj,fake_boom,fake_fewonly", features=str(feats), splits=str(splits),
                             shifts="1..3", k="0,2", seeds="0..1", results=str(tmp / "results"), workers=1))
    with fake_methods():
        assert run_grid(cfg) == 1  # fake_boom fails every cell
    return tmp / "results"


def test_report_of_a_runner_store(runner_store: Path) -> None:
    paths = build_report(results=runner_store, metric=None)
    dataset = json.loads(next((runner_store / "cells").glob("*.json")).read_text())["rows"][0]["dataset"]
    out = runner_store / dataset
    assert out / "report.html" in paths and out / "leaderboard_k0.csv" in paths
    truth: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    errors: dict[tuple[str, int], set[str]] = defaultdict(set)
    fids: dict[int, float] = {}
    for f in (runner_store / "cells").glob("*.json"):
        for r in json.loads(f.read_text())["rows"]:
            if r["status"] == "ok" and r["metric"] == "recall@1":
                truth[(r["method"], r["k_shot"], r["split_level"])].append(r["value"])
                fids[r["split_level"]] = r["split_fid"]
            if r["status"] == "error":
                errors[(r["method"], r["k_shot"])].add(r["cell_id"])
    for k in (0, 2):
        with (out / f"leaderboard_k{k}.csv").open() as fh:
            board = {r["method"]: r for r in csv.DictReader(fh)}
        methods = {m for (m, kk, _) in truth if kk == k} | {m for (m, kk) in errors if kk == k}
        assert set(board) == methods
        assert "fake_boom" in board and board["fake_boom"]["rank"] == "" and board["fake_boom"]["mean"] == ""
        assert int(board["fake_boom"]["n_errors"]) == len(errors[("fake_boom", k)]) == 6  # 3 levels x 2 seeds
        assert ("fake_fewonly" in board) == (k > 0)  # skipped at k = 0: neither ranked nor counted as an error
        for m, row in board.items():
            if m == "fake_boom":
                continue
            levels = [np.mean(truth[(m, k, lv)]) for lv in (1, 2, 3)]
            assert [float(row[f"L{lv}"]) for lv in (1, 2, 3)] == pytest.approx(levels, abs=1e-12)
            assert float(row["mean"]) == pytest.approx(np.mean(levels), abs=1e-12)
            x = [fids[lv] for lv in (1, 2, 3)]
            assert float(row["auc"]) == pytest.approx(np.trapezoid(levels, x) / (x[-1] - x[0]), abs=1e-12)
            assert row["n_seeds"] == "2"
    md = (out / "report.md").read_text()
    assert "boom in fit" in md and "## Failed cells" in md
