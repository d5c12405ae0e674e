"""The README pipeline in miniature on the embedded dataset: embed -> make-splits -> run -> report (CLI only)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oodml.cli import app


def invoke(*args: str) -> str:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, f"oodml {' '.join(args)} -> {r.exit_code}: {r.output}"
    return r.output


def test_pipeline_on_omniglot_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    feats, splits, results = tmp_path / "f.npz", tmp_path / "s.json", tmp_path / "results"
    invoke("embed", "omniglot_small", "--classes", "Greek/*", "--out", str(feats), "--batch-size", "32")
    invoke("make-splits", "--features", str(feats), "--levels", "3", "--k", "2", "--episodes", "2",
           "--out", str(splits))
    spec = json.loads(splits.read_text())
    assert spec["dataset"] == "omniglot_small" and len(spec["levels"]) == 3
    assert all(len(lv["train_classes"]) + len(lv["test_classes"]) + len(lv["removed_classes"]) == 24
               for lv in spec["levels"])
    invoke("run", "--features", str(feats), "--splits", str(splits), "--method", "pretrained,protonet",
           "--shifts", "all", "--k", "0,2", "--seeds", "0", "--method-param", "iterations=20",
           "--workers", "1", "--results", str(results))
    cells = sorted((results / "cells").glob("*.json"))
    assert len(cells) == 2 * 3
    assert all(json.loads(c.read_text())["status"] == "ok" for c in cells)
    # a rerun skips every finished cell
    r = CliRunner().invoke(app, ["run", "--features", str(feats), "--splits", str(splits), "--method",
                                 "pretrained,protonet", "--shifts", "all", "--k", "0,2", "--seeds", "0",
                                 "--method-param", "iterations=20", "--workers", "1", "--results", str(results)])
    assert r.exit_code == 0 and "skipped 6" in r.output.replace("\n", " ")
    invoke("report", "--results", str(results))
    out = results / "omniglot_small"
    board = pd.read_csv(out / "leaderboard_k0.csv")
    rows = pd.read_csv(out / "all.csv")
    assert set(board["method"]) == {"pretrained", "protonet"}
    for _, b in board.iterrows():
        sel = rows[(rows.method == b.method) & (rows.k_shot == 0) & (rows.metric == b.metric)]
        assert b["mean"] == pytest.approx(sel.groupby("split_level")["value"].mean().mean(), rel=1e-12)
    assert (out / "report.md").is_file() and (out / "curves_recall@1.png").stat().st_size > 1000
