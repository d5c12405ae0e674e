"""`oodml compare A B`: paired differences on hand-made cell files, A - A, and unpaired cells -> exit 2."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oodml.cli import app
from tests.report.conftest import write_unit_cell


def _study(results: Path, *, shift: float = 0.0, seeds: tuple[int, ...] = (0, 1, 2), levels: tuple[int, ...] = (1, 2),
           n_episodes: int = 6) -> dict[tuple[int, int], np.ndarray]:
    """`b` with random episode values, `a` = b + shift on every episode (k = 5)."""
    rng = np.random.default_rng(0)
    vals = {}
    for lv, s in itertools.product(levels, seeds):
        v = rng.uniform(0.2, 0.7, n_episodes)
        vals[(lv, s)] = v
        write_unit_cell(results, method="b", level=lv, seed=s, k=5, values=list(v))
        write_unit_cell(results, method="a", level=lv, seed=s, k=5, values=list(v + shift))
    return vals


def _invoke(*args: str) -> object:
    return CliRunner().invoke(app, ["compare", *args])


def test_a_vs_a_is_zero_with_p_one(tmp_path: Path) -> None:
    _study(tmp_path)
    r = _invoke("b", "b", "--results", str(tmp_path))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    table = pd.read_csv(tmp_path / "u" / "compare_b_vs_b_recall@1_k5.csv")
    assert list(table["level"]) == ["1", "2", "all"]
    assert (table["diff"] == 0).all() and (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()
    assert (table["p"] == 1).all() and (table["p_holm"].iloc[:2] == 1).all()
    assert "0.0000 [0.0000, 0.0000]" in r.stdout  # type: ignore[attr-defined]
    assert "verdict (k=5, recall@1, 2 levels, 3 seeds): no resolved difference" in r.stdout  # type: ignore


def test_constant_shift_is_resolved(tmp_path: Path) -> None:
    vals = _study(tmp_path, shift=0.1)
    r = _invoke("a", "b", "--results", str(tmp_path), "--k", "5", "--bootstrap", "500")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    table = pd.read_csv(tmp_path / "u" / "compare_a_vs_b_recall@1_k5.csv").set_index("level")
    assert table["diff"].to_numpy() == pytest.approx(np.full(3, 0.1))
    assert table["ci_low"].to_numpy() == pytest.approx(np.full(3, 0.1))
    assert table["ci_high"].to_numpy() == pytest.approx(np.full(3, 0.1))
    # the same +0.1 on every seed: no seed-to-seed spread, so the t test rejects outright
    assert table.loc["1", "p"] == 0 and table.loc["all", "p"] == 0
    assert "a > b over levels" in r.stdout and "at every level (Holm)" in r.stdout  # type: ignore[attr-defined]
    assert table.loc["1", "mean_b"] == pytest.approx(np.mean([vals[(1, s)] for s in (0, 1, 2)]))
    assert table.loc["all", "n_seeds"] == 3 and table.loc["1", "n_units"] == 18
    assert "written: " in r.stdout  # type: ignore[attr-defined]


def test_levels_option_restricts(tmp_path: Path) -> None:
    _study(tmp_path, shift=0.05)
    r = _invoke("a", "b", "--results", str(tmp_path), "--levels", "2")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    table = pd.read_csv(tmp_path / "u" / "compare_a_vs_b_recall@1_k5.csv")
    assert list(table["level"]) == ["2", "all"]


def _one_error_line(r: object) -> str:
    assert r.exit_code == 2, r.output  # type: ignore[attr-defined]
    lines = r.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output  # type: ignore
    return lines[0]


def test_other_split_file_is_unpaired(tmp_path: Path) -> None:
    write_unit_cell(tmp_path, method="a", level=1, seed=0, k=5, values=[0.1, 0.2], split_hash="h1")
    write_unit_cell(tmp_path, method="b", level=1, seed=0, k=5, values=[0.1, 0.2], split_hash="other")
    line = _one_error_line(_invoke("a", "b", "--results", str(tmp_path)))
    assert "unpaired cells" in line and "level 1" in line and "other" in line and "split" in line


def test_other_episodes_are_unpaired(tmp_path: Path) -> None:
    write_unit_cell(tmp_path, method="a", level=1, seed=0, k=5, values=[0.1, 0.2, 0.3])
    write_unit_cell(tmp_path, method="b", level=1, seed=0, k=5, values=[0.1, 0.2])
    line = _one_error_line(_invoke("a", "b", "--results", str(tmp_path)))
    assert "unpaired cells" in line and "seed 0" in line and "episodes" in line and "differing: episodes 2" in line


def test_other_seeds_and_classes_are_unpaired(tmp_path: Path) -> None:
    _study(tmp_path, seeds=(0, 1))
    write_unit_cell(tmp_path, method="a", level=1, seed=2, k=5, values=[0.1] * 6)
    line = _one_error_line(_invoke("a", "b", "--results", str(tmp_path)))
    assert "seeds 0,1,2" in line and "seeds 0,1" in line
    zero = tmp_path / "z"
    write_unit_cell(zero, method="a", level=1, seed=0, k=0, values=[0.5, 0.5], n_queries=[2, 2], classes=["x", "y"])
    write_unit_cell(zero, method="b", level=1, seed=0, k=0, values=[0.5, 0.5], n_queries=[2, 3], classes=["x", "y"])
    line = _one_error_line(_invoke("a", "b", "--results", str(zero)))
    assert "query counts" in line and "classes y" in line


def test_unknown_method_and_missing_k(tmp_path: Path) -> None:
    _study(tmp_path)
    line = _one_error_line(_invoke("aa", "b", "--results", str(tmp_path)))
    assert "'aa'" in line and "did you mean a" in line
    line = _one_error_line(_invoke("a", "b", "--results", str(tmp_path), "--k", "10"))
    assert "k=10" in line


def test_seed_level_interval_and_verdict_by_hand(tmp_path: Path) -> None:
    # per-seed differences 0.01, 0.02, 0.06 at the one level: mean 0.03, sd 0.0264575, t(2) = 4.302653
    for s, d in enumerate((0.01, 0.02, 0.06)):
        write_unit_cell(tmp_path, method="b", level=1, seed=s, k=5, values=[0.5, 0.4])
        write_unit_cell(tmp_path, method="a", level=1, seed=s, k=5, values=[0.5 + d, 0.4 + d])
    r = _invoke("a", "b", "--results", str(tmp_path))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    t = pd.read_csv(tmp_path / "u" / "compare_a_vs_b_recall@1_k5.csv").set_index("level")
    half = 4.302653 * 0.0264575 / np.sqrt(3)
    assert (t.loc["all", "ci_low"], t.loc["all", "ci_high"]) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-6)
    assert t.loc["all", "p"] == pytest.approx(0.1885, abs=1e-4)  # t = 1.9640 at 2 df: 1 - t / sqrt(2 + t^2)
    assert "no resolved difference over levels" in r.stdout  # type: ignore[attr-defined]


def test_one_seed_claims_nothing(tmp_path: Path) -> None:
    write_unit_cell(tmp_path, method="b", level=1, seed=0, k=5, values=[0.1, 0.2, 0.3, 0.4])
    write_unit_cell(tmp_path, method="a", level=1, seed=0, k=5, values=[0.3, 0.4, 0.5, 0.6])
    r = _invoke("a", "b", "--results", str(tmp_path))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    t = pd.read_csv(tmp_path / "u" / "compare_a_vs_b_recall@1_k5.csv")
    assert t[["ci_low", "ci_high", "p", "p_holm"]].isna().all().all()
    assert (t["note"] == "1 seed: training variance not estimated").all()
    assert "no interval, 1 seed: training variance not estimated" in r.stdout  # type: ignore[attr-defined]
