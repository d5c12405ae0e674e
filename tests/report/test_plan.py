"""`oodml plan A B`: variance components of a pilot, seeds needed, and a pilot too small to plan from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oodml.cli import app
from oodml.report import stats as st
from oodml.report.plan import plan_command
from tests.report.conftest import write_unit_cell


def _pilot(results: Path, shifts: tuple[float, ...], noise: float = 0.0) -> None:
    """b: four episodes; a: b + the seed's shift on every episode (+ per-episode noise)."""
    rng = np.random.default_rng(0)
    base = [0.5, 0.6, 0.4, 0.7]
    for s, d in enumerate(shifts):
        write_unit_cell(results, method="b", level=1, seed=s, k=5, values=base)
        write_unit_cell(results, method="a", level=1, seed=s, k=5,
                        values=[v + d + noise * float(rng.normal()) for v in base])


def test_between_seed_spread_alone(tmp_path: Path) -> None:
    shifts = (0.01, 0.03, 0.02, 0.06)
    _pilot(tmp_path, shifts)
    (p,) = plan_command(results=tmp_path, a="a", b="b", k=5)
    var = float(np.var(shifts, ddof=1))
    assert p.observed == pytest.approx(np.mean(shifts)) and p.n_seeds == 4 and p.unit_kind == "episodes"
    assert p.within == pytest.approx(0.0, abs=1e-12) and p.between == pytest.approx(var)
    assert p.needed[1] == st.seeds_needed(float(np.mean(shifts)), var, 0.0) == p.needed[5]  # more episodes: no help
    (half,) = plan_command(results=tmp_path, a="a", b="b", k=5, delta=0.015)
    assert half.needed[1] == st.seeds_needed(0.015, var, 0.0) > p.needed[1]


def test_episode_noise_is_the_part_more_episodes_shrink(tmp_path: Path) -> None:
    _pilot(tmp_path, (0.02, 0.02, 0.02, 0.02), noise=0.05)
    (p,) = plan_command(results=tmp_path, a="a", b="b", k=5)
    assert p.within > 0 and p.needed[5] <= p.needed[2] <= p.needed[1]


def test_cli_prints_the_seeds_and_refuses_a_one_seed_pilot(tmp_path: Path) -> None:
    _pilot(tmp_path / "ok", (0.01, 0.03, 0.02))
    r = CliRunner().invoke(app, ["plan", "a", "b", "--results", str(tmp_path / "ok"), "--k", "5"])
    assert r.exit_code == 0, r.output
    assert "seeds" in r.stdout and "to resolve +0.0200 with 80% power" in r.stdout
    _pilot(tmp_path / "one", (0.01,))
    r = CliRunner().invoke(app, ["plan", "a", "b", "--results", str(tmp_path / "one"), "--k", "5"])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: ") and "1 seed" in r.stderr
