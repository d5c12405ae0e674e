"""The decisive CUB-200 study (results/oodml_cub200_decisive): its committed cells are what its config computes.

The `pretrained` level-1 seed-0 cell is recomputed from the config and compared with the committed cell file, row by
row: same cell id (config hash), same values. It needs the CUB-200 Lite0 features of `splits/cub200.json`, which a
fresh machine computes from ../shared/data. The default test uses the feature cache where it holds them, and otherwise
computes them into a cache of its own; the `slow` test always starts from an empty cache, as a fresh machine does: it
embeds all 11,788 images (about 2 minutes on 2 cores), checks that they hash to the split file's `feature_hash`, and
then recomputes the cell (`pytest -m slow tests/test_decisive_study.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oodml.features.cache import find_cached_features
from oodml.splits.spec import SplitSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "baselines" / "oodml_cub200_decisive.yaml"
CELLS = ROOT / "results" / "oodml_cub200_decisive" / "cells"


def _recompute_and_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oodml.cli import main

    (committed,) = CELLS.glob("pretrained_L1_s0_*.json")
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(CONFIG), "--method", "pretrained", "--shifts", "1", "--seeds", "0",
              "--workers", "1", "--results", str(tmp_path / "r")])
    assert e.value.code == 0
    (fresh,) = (tmp_path / "r" / "cells").glob("pretrained_L1_s0_*.json")
    assert fresh.name == committed.name  # the same cell id: the same resolved configuration
    old, new = json.loads(committed.read_text()), json.loads(fresh.read_text())
    assert new["status"] == old["status"] == "ok"

    def values(cell: dict) -> dict[tuple, float]:
        return {(r["method"], r["k_shot"], r["metric"]): r["value"] for r in cell["rows"]}

    assert values(new) == values(old) and len(values(old)) >= 3
    assert new["episodes"] == old["episodes"] and new["classes"] == old["classes"]


def test_pretrained_level_1_cell_recomputes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the cached features where the machine has them; else, as on a fresh clone, computed into a cache of the
    test's own (about 2 minutes on 2 cores), which must give the split file's feature hash."""
    spec = SplitSpec.load(ROOT / "splits" / "cub200.json")
    fresh = find_cached_features(spec.feature_hash) is None
    if fresh:
        monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    _recompute_and_compare(tmp_path, monkeypatch)
    if fresh:
        assert find_cached_features(spec.feature_hash) is not None


@pytest.mark.slow
def test_pretrained_level_1_cell_recomputes_from_an_empty_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh machine: no cached features. `oodml run` embeds CUB-200 from the published archive layout under
    $OODML_DATA, and those features must be the very ones the split file was built on."""
    spec = SplitSpec.load(ROOT / "splits" / "cub200.json")
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    assert find_cached_features(spec.feature_hash) is None
    _recompute_and_compare(tmp_path, monkeypatch)
    assert find_cached_features(spec.feature_hash) is not None  # computed here, with the split file's hash
