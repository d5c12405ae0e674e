"""Verdicts on a committed study: the seed-level intervals decide as the statistics say, whatever the resampling
option, and one seed claims nothing about training variance. Also: the report package imports one way."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import orjson
import pytest

from oodml.report.compare import compare_command

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "results" / "oodml_cub200_lite0" / "cells"
METHODS = {"margin", "margin+sec", "adapted_margin"}


@pytest.fixture(scope="module")
def cub200(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The committed CUB-200 study's cells of three methods: seeds 0-2, and seed 0 alone."""
    if not STUDY.is_dir():
        pytest.fail(f"committed study missing: {STUDY}")
    out = {name: tmp_path_factory.mktemp(name) for name in ("seeds012", "seed0")}
    for folder in out.values():
        (folder / "cells").mkdir()
    for f in sorted(STUDY.glob("*.json")):
        cell = orjson.loads(f.read_bytes())
        rows = cell.get("rows") or []
        if not rows or rows[0].get("method") not in METHODS:
            continue
        shutil.copy(f, out["seeds012"] / "cells" / f.name)
        if int(rows[0]["seed"]) == 0:
            shutil.copy(f, out["seed0"] / "cells" / f.name)
    return out


def _over(results: Path, a: str, b: str, k: int, bootstrap: int = 2000) -> tuple[dict[str, object], str]:
    (c,) = compare_command(results=results, a=a, b=b, ks=(k,), bootstrap=bootstrap)
    return c.table[c.table["level"] == "all"].iloc[0].to_dict(), c.verdict


def test_sec_is_unresolved_and_adaptation_resolved_at_three_seeds(cub200: dict[str, Path]) -> None:
    sec, verdict = _over(cub200["seeds012"], "margin+sec", "margin", 0)
    assert sec["n_seeds"] == 3 and sec["ci_low"] < 0 < sec["ci_high"] and sec["p"] >= 0.05
    assert sec["diff"] == pytest.approx(0.0072, abs=5e-5)  # the point estimate does not change
    assert "no resolved difference over levels" in verdict
    adapt, verdict = _over(cub200["seeds012"], "adapted_margin", "margin", 10)
    assert adapt["ci_low"] > 0 and adapt["p"] < 0.05 and "adapted_margin > margin over levels" in verdict


def test_one_seed_claims_nothing_about_training_variance(cub200: dict[str, Path]) -> None:
    for a, b, k in (("margin+sec", "margin", 0), ("adapted_margin", "margin", 10)):
        (c,) = compare_command(results=cub200["seed0"], a=a, b=b, ks=(k,))
        assert c.table[["ci_low", "ci_high", "p", "p_holm"]].isna().all().all()
        assert (c.table["note"] == "1 seed: training variance not estimated").all()
        assert "no interval, 1 seed: training variance not estimated" in c.verdict


def test_verdicts_do_not_depend_on_the_resampling_option(cub200: dict[str, Path]) -> None:
    seen = {_over(cub200["seeds012"], "margin+sec", "margin", 0, bootstrap=n)[1] for n in
            (0, 1, 10, 99, 500, 1000, 2000, 4999, 10_000, 20_000)}
    assert len(seen) == 1


def _imports(path: Path) -> set[str]:
    """Every oodml.report module `path` imports, at any depth of the file (function bodies included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "oodml.report":
                out |= {f"oodml.report.{a.name}" for a in node.names}
            elif node.module.startswith("oodml.report."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("oodml.report.")}
    return out


def test_the_report_package_imports_one_way() -> None:
    pkg = ROOT / "oodml" / "report"
    graph = {f"oodml.report.{p.stem}": _imports(p) for p in pkg.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        if state.get(mod) == 2:
            return
        assert state.get(mod) != 1, f"import circle: {' -> '.join(path + [mod])}"
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            visit(dep, path + [mod])
        state[mod] = 2

    for mod in sorted(graph):
        visit(mod, [])
