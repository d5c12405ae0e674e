"""The runner as users run it: `python -m oodml run` subprocesses, worker pools, SIGKILL + resume, Ray, and the
issue's acceptance grid with the real methods."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from oodml.cli import app
from oodml.config import build_run_cfg
from oodml.runner import CellStore, run_grid
from tests.conftest import REPO
from tests.runner.fakes import fake_methods, write_inputs

VOLATILE = ("created_at", "wall_time_s", "peak_mem_mb", "git_sha")
FAST = ["--method-param", "iterations=20", "--method-param", "adapt_iterations=5"]


def oodml_cmd(feats: Path, splits: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "oodml", "run", "--features", str(feats), "--splits", str(splits),
            "--results", str(results), *extra]


def env(**kw: str) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    e.update(kw)
    return e


def rows(results: Path) -> list[dict[str, Any]]:
    out = [{k: v for k, v in r.items() if k not in VOLATILE} for c in CellStore(results).cells() for r in c["rows"]]
    return sorted(out, key=lambda r: (r["cell_id"], r["method"], r["k_shot"], str(r["metric"])))


def values(results: Path) -> dict[tuple[Any, ...], Any]:
    return {(r["cell_id"], r["method"], r["k_shot"], r["metric"]): (r["value"], r["episode_std"], r["status"])
            for r in rows(results)}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, n_classes=12, per_class=6, dim=8, levels=3, ks=(2,))


@pytest.mark.parametrize("args", [
    ["--shifts", "8..1"], ["--shifts", "1..99"], ["--shifts", "x"], ["--method", "nosuch"], ["--k", "-1"],
    ["--k", "0,7"], ["--method", "pretrained", "--method-param", "nosuchparam=1"],
])
def test_bad_input_is_one_error_line_exit_2_nothing_written(files: tuple[Path, Path], tmp_path: Path,
                                                            args: list[str]) -> None:
    opts = ["--method", "pretrained", *args] if "--method" not in args else args
    r = CliRunner().invoke(app, ["run", "--features", str(files[0]), "--splits", str(files[1]),
                                 "--results", str(tmp_path / "r"), *opts])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert not (tmp_path / "r").exists()


def test_split_file_of_other_features_exit_2(files: tuple[Path, Path], tmp_path: Path) -> None:
    other, _ = write_inputs(tmp_path / "o", n_classes=12, per_class=7, dim=8)
    r = CliRunner().invoke(app, ["run", "--features", str(other), "--splits", str(files[1]), "--method", "pretrained",
                                 "--results", str(tmp_path / "r")])
    assert r.exit_code == 2 and "feature" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


PLUGIN = "tests.runner.fake_plugin"


def run_here(feats: Path, splits: Path, results: Path, **kw: Any) -> int:
    """`oodml run` in this process (fake methods registered; workers load them through the plugin)."""
    opts: dict[str, Any] = dict(features=str(feats), splits=str(splits), results=str(results), plugins=(PLUGIN,))
    opts.update(kw)
    with fake_methods():
        return run_grid(build_run_cfg(opts))


def test_sigkill_mid_run_then_rerun_equals_clean_run(files: tuple[Path, Path], tmp_path: Path) -> None:
    """kill -9 of the whole process group while cells run; the same command then completes the grid, and the
    results equal an uninterrupted run's."""
    grid = dict(method="fake_slow,fake_proj", shifts="1..2", k="0,2", seeds="0..1", workers=1)
    argv = [f"--{k}={v}" for k, v in grid.items()] + ["--plugin", PLUGIN]
    e = env(FAKE_SLOW_S="0.4")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(oodml_cmd(*files, killed, *argv), env=e, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((killed / "cells").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((killed / "cells").glob("*.json")))
    assert 2 <= n_before < 8, "the kill should land mid-run"
    resumed = subprocess.run(oodml_cmd(*files, killed, *argv), env=e, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {n_before} finished, {8 - n_before} remaining" in resumed.stderr
    os.environ["FAKE_SLOW_S"], old = "0", os.environ.get("FAKE_SLOW_S")
    try:
        assert run_here(*files, tmp_path / "clean", **grid) == 0
    finally:
        os.environ.pop("FAKE_SLOW_S") if old is None else os.environ.__setitem__("FAKE_SLOW_S", old)
    assert len(CellStore(killed).cells()) == 8
    assert rows(killed) == rows(tmp_path / "clean")


def test_worker_pool_stores_every_cell_and_errors(files: tuple[Path, Path], tmp_path: Path) -> None:
    """--workers 2: cells run in pool processes, the parent writes them; a failing cell doesn't stop the others."""
    grid = dict(method="fake_proj,fake_boom", shifts="1..2", k="0,2", seeds="0")
    assert run_here(*files, tmp_path / "pool", workers=2, **grid) == 1
    assert run_here(*files, tmp_path / "one", workers=1, **grid) == 1
    cells = CellStore(tmp_path / "pool").cells()
    assert len(cells) == 4
    assert sorted(c["status"] for c in cells) == ["error", "error", "ok", "ok"]
    assert all("boom in fit" in c["error"] for c in cells if c["status"] == "error")
    pool, one = values(tmp_path / "pool"), values(tmp_path / "one")
    assert pool.keys() == one.keys()
    assert pool == one  # a cell computes with one thread whatever --workers is: the same numbers


def test_a_dying_worker_becomes_an_error_cell(files: tuple[Path, Path], tmp_path: Path) -> None:
    assert run_here(*files, tmp_path / "r", workers=2, method="fake_die", shifts="1..2", k="0", seeds="0") == 1
    cells = CellStore(tmp_path / "r").cells()
    assert len(cells) == 2 and {c["status"] for c in cells} == {"error"}
    assert all("worker process died" in c["error"] for c in cells)


def test_ray_gives_the_same_values_as_local(files: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    grid = dict(method="pretrained,adapted_proto", shifts="1", k="0,2", seeds="0", workers=1,
                method_params=["iterations=20", "adapt_iterations=5"])
    cfg = dict(features=str(files[0]), splits=str(files[1]), **grid)
    assert run_grid(build_run_cfg(dict(cfg, results=str(tmp_path / "local")))) == 0
    assert run_grid(build_run_cfg(dict(cfg, results=str(tmp_path / "ray"), executor="ray"))) == 0
    assert len(CellStore(tmp_path / "ray").cells()) == 2
    assert values(tmp_path / "ray") == values(tmp_path / "local")


@pytest.mark.slow
def test_acceptance_grid_kill_resume_and_ray(tmp_path: Path) -> None:
    """The issue's acceptance: pretrained,triplet,adapted_proto x levels 1..3 x k 0,2 x seeds 0..1."""
    from tests.conftest import make_blobs
    from tests.runner.fakes import build_split

    fs = make_blobs(n_classes=16, per_class=8, dim=16, spread=0.8)
    feats = fs.save(tmp_path / "f.npz")
    splits = build_split(fs, levels=3, ks=(2,), episodes=3).save(tmp_path / "s.json")
    grid = ["--method", "pretrained,triplet,adapted_proto", "--shifts", "1..3", "--k", "0,2", "--seeds", "0..1",
            "--workers", "2", *FAST]
    clean = subprocess.run(oodml_cmd(feats, splits, tmp_path / "clean", *grid), env=env(), cwd=REPO,
                           capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    cells = CellStore(tmp_path / "clean").cells()
    assert len(cells) == 18 and {c["status"] for c in cells} == {"ok"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(oodml_cmd(feats, splits, killed, *grid), env=env(), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(list((killed / "cells").glob("*.json"))) < 5 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list((killed / "cells").glob("*.json"))) < 18
    assert subprocess.run(oodml_cmd(feats, splits, killed, *grid), env=env(), cwd=REPO).returncode == 0
    assert rows(killed) == rows(tmp_path / "clean")
    ray = subprocess.run(oodml_cmd(feats, splits, tmp_path / "ray", *grid, "--executor", "ray"), env=env(),
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ray.returncode == 0, ray.stderr
    assert values(tmp_path / "ray") == values(tmp_path / "clean")
