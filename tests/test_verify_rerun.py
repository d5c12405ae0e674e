"""baselines/verify_rerun.py: a rerun's cells against a committed all.csv, value by value."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from oodml.config import build_run_cfg
from oodml.report import build_report
from oodml.runner import run_grid
from tests.runner.fakes import fake_methods, write_inputs

SCRIPT = Path(__file__).resolve().parents[1] / "baselines" / "verify_rerun.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("baselines_verify_rerun", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run (2 levels, k = 0 and 2, per-episode and per-class values) and the all.csv its report wrote."""
    tmp = tmp_path_factory.mktemp("study")
    feats, splits = write_inputs(tmp, ks=(2,), levels=2)
    with fake_methods():
        cfg = build_run_cfg(dict(method="fake_proj", features=str(feats), splits=str(splits), shifts="1..2",
                                 k="0,2", seeds="0", results=str(tmp / "r"), workers=1))
        assert run_grid(cfg) == 0
    build_report(results=tmp / "r")
    (csv,) = (tmp / "r").glob("*/all.csv")
    return tmp / "r", csv


def test_identical_rerun_exits_0(study: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rerun, csv = study
    table = pd.read_csv(csv, low_memory=False)
    assert table["episode"].notna().any() and table["class"].notna().any()  # unit rows are compared too
    assert _load().main([str(rerun), str(csv)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{len(table)} of {len(table)} identical" and out[1] == "max abs difference: 0"
    assert out[3].endswith(": 2 of 2")  # both cells' ids (config hashes) are the committed ones


def test_a_changed_cell_id_exits_1(study: tuple[Path, Path], tmp_path: Path) -> None:
    rerun, csv = study
    table = pd.read_csv(csv, low_memory=False)
    table["cell_id"] = table["cell_id"].str.replace("fake_proj", "other", regex=False)
    table.to_csv(tmp_path / "all.csv", index=False)
    v = _load()
    assert v.compare(rerun, tmp_path / "all.csv").cells == (0, 2)
    assert v.main([str(rerun), str(tmp_path / "all.csv")]) == 1


def test_a_changed_value_and_a_missing_row_exit_1(study: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rerun, csv = study
    table = pd.read_csv(csv, low_memory=False)
    agg = table.index[table["episode"].isna() & table["class"].isna() & (table["metric"] == "recall@1")][0]
    table.loc[agg, "value"] += 0.25
    unit = table.index[table["episode"].notna()][0]
    changed = table.drop(index=unit)
    changed.to_csv(tmp_path / "all.csv", index=False)
    v = _load()
    c = v.compare(rerun, tmp_path / "all.csv")
    assert (c.total, c.identical, c.missing) == (len(table), len(table) - 2, 1)
    assert c.max_abs_diff == pytest.approx(0.25)
    assert v.main([str(rerun), str(tmp_path / "all.csv")]) == 1
    out = capsys.readouterr().out
    assert f"{len(table) - 2} of {len(table)} identical" in out and "first 2 of 2 mismatches" in out


def test_bad_input_is_one_error_line(study: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rerun, _ = study
    assert _load().main([str(rerun), str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no committed table")
