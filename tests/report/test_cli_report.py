"""`oodml report` through the CLI: exit codes and the one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from oodml.cli import app
from tests.report.conftest import write_grid


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_empty_or_missing_results_exit_2_one_line(tmp_path: Path, make: str) -> None:
    results = tmp_path / "results"
    if make == "empty":
        (results / "cells").mkdir(parents=True)
    r = CliRunner().invoke(app, ["report", "--results", str(results)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "oodml run" in lines[0]
    assert "Traceback" not in r.output


def test_unknown_metric_exit_2(tmp_path: Path) -> None:
    write_grid(tmp_path, levels=(1,), ks=(0,), seeds=(0,))
    r = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--metric", "recal@1"])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: unknown metric 'recal@1' (did you mean recall@1")


def test_report_prints_written_paths(tmp_path: Path) -> None:
    write_grid(tmp_path, levels=(1, 2), ks=(0, 2), seeds=(0,))
    r = CliRunner().invoke(app, ["report", "--results", str(tmp_path)])
    assert r.exit_code == 0, r.output
    printed = [Path(line) for line in r.stdout.splitlines()]
    assert tmp_path / "synthetic" / "leaderboard_k2.csv" in printed
    assert all(p.is_file() for p in printed)
    assert "open " in r.stderr and "report.html" in r.stderr


def test_bootstrap_option_is_passed_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake(**kw: object) -> list[Path]:
        seen.update(kw)
        return []

    monkeypatch.setattr("oodml.report.build_report", fake)
    r = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--bootstrap", "300"])
    assert r.exit_code == 0, r.output
    assert seen == {"results": tmp_path, "metric": None, "bootstrap": 300}
    r = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--bootstrap", "-1"])
    assert r.exit_code == 2
