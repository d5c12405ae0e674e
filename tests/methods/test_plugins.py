"""Plugins: the docs/plugins.md example, installed as a tiny distribution (package + `*.dist-info` with an
`oodml.methods` entry point) on PYTHONPATH, runs through `oodml run` and `oodml list methods` in subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.runner.fakes import write_inputs

DOC = REPO / "docs" / "plugins.md"
PKG = "my_oodml_methods"


def _doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_doc_example_registers_a_loss_in_about_15_lines() -> None:
    example = _doc_example()
    code = [ln for ln in example.splitlines() if ln.strip()]
    assert 10 <= len(code) <= 20 and "register_dml_loss(" in example and "class CircleMethod" not in example


def _install(site: Path, entry_point: bool = True) -> None:
    """A minimal installed distribution: the package, plus METADATA and entry_points.txt in a dist-info folder."""
    (site / PKG).mkdir(parents=True)
    (site / PKG / "__init__.py").write_text(_doc_example())
    if entry_point:
        info = site / f"{PKG}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[oodml.methods]\ncircle = {PKG}\n")


def _env(site: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(site),
                                                                                                    str(REPO)]))


def _oodml(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oodml", *args], env=_env(site), cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_entry_point_plugin_runs_through_oodml_run(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site)
    listed = _oodml(site, "list", "methods")
    assert listed.returncode == 0, listed.stderr
    names = [ln.split("\t")[0] for ln in listed.stdout.splitlines()]
    assert "circle" in names and "adapted_circle" in names and "margin" in names
    feats, splits = write_inputs(tmp_path, n_classes=12, per_class=6, dim=8, levels=1, ks=(2,), episodes=2)
    results = tmp_path / "results"
    run = _oodml(site, "run", "--features", str(feats), "--splits", str(splits), "--results", str(results),
                 "--method", "circle,adapted_circle+sec", "--k", "0,2", "--seeds", "0", "--workers", "1",
                 "--method-param", "iterations=5", "--method-param", "adapt_iterations=3",
                 "--method-param", "circle.gamma=64")
    assert run.returncode == 0, run.stderr[-2000:]
    cells = [json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))]
    assert len(cells) == 2 and all(c["status"] == "ok" for c in cells)
    rows = [r for c in cells for r in c["rows"]]
    assert {r["method"] for r in rows} == {"circle", "adapted_circle+sec"}
    assert {r["method_family"] for r in rows} == {"dml", "adapted"}
    params = {r["method"]: json.loads(r["method_params"]) for r in rows}
    # circle.gamma reaches adapted_circle+sec too: it fits as circle+sec, which circle.gamma reaches
    assert params["circle"]["gamma"] == 64 and params["adapted_circle+sec"]["gamma"] == 64
    assert params["adapted_circle+sec"]["sec_eta"] == 1.0 and params["circle"]["iterations"] == 5
    acc = [r for r in rows if r["metric"] == "accuracy" and r["k_shot"] == 2]
    assert len(acc) == 2 and all(0 <= r["value"] <= 1 and r["status"] == "ok" for r in acc)


def test_explicit_plugin_module_without_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site, entry_point=False)
    listed = _oodml(site, "list", "methods", "--plugin", PKG)
    assert listed.returncode == 0, listed.stderr
    assert "circle\tcircle loss (Sun et al. 2020)" in listed.stdout.splitlines()


def test_missing_plugin_module_is_one_error_line() -> None:
    from typer.testing import CliRunner

    from oodml.cli import app

    res = CliRunner().invoke(app, ["list", "methods", "--plugin", "no_such_plugin_mod"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: plugin module 'no_such_plugin_mod' not found")
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_doc_example_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example registers two methods whose objective is PML's CircleLoss, with the paper's m and gamma."""
    import numpy as np

    from oodml.methods import METHODS, MethodContext, build_method, make_inputs
    from tests.conftest import make_blobs

    site = tmp_path / "site"
    _install(site, entry_point=False)
    monkeypatch.syspath_prepend(str(site))
    before = set(METHODS.names())
    try:
        __import__(PKG)
        assert set(METHODS.names()) - before == {"circle", "adapted_circle"}
        fs = make_blobs()
        m = build_method("adapted_circle+sec", MethodContext(in_dim=8), {"iterations": 3, "adapt_iterations": 2})
        x = make_inputs("head", features=fs, rows=np.arange(len(fs.labels)))
        m.fit(x, fs.labels)
        assert np.isfinite(m.adapt(x, fs.labels).embed(x)).all()
    finally:  # leave the process registry as it was
        for name in set(METHODS.names()) - before:
            METHODS._entries.pop(name)
        sys.modules.pop(PKG, None)
