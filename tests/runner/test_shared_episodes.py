"""k-shot cells of methods that don't adapt: one embedding and one deep kNN search per cell give the rows and
episodes of the per-episode path (embed support + queries, search the queries) exactly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import oodml.eval.protocol as protocol
from oodml.config import build_run_cfg
from oodml.features.io import FeatureSet
from oodml.runner import plan_grid
from oodml.runner.cell import CellResult, CellTask, execute
from tests.conftest import make_blobs
from tests.runner.fakes import build_split, fake_methods


@pytest.fixture
def fakes() -> Iterator[None]:
    with fake_methods():
        yield


def inputs(tmp: Path, *, integer: bool) -> tuple[Path, Path]:
    """20 classes x 16 images, D = 6 (k-shot supports stay under a fifth of the test rows, so the shared search is
    taken); integer coordinates make every distance exact (and create real ties)."""
    fs = make_blobs(n_classes=20, per_class=16, dim=6, seed=2, spread=2.0)
    feats = np.round(fs.features) if integer else fs.features
    fs = FeatureSet(feats.astype(np.float32), fs.labels, fs.class_names, fs.paths, fs.meta, fs.class_split)
    f = fs.save(tmp / "feats.npz")
    s = build_split(FeatureSet.load(f), levels=1, ks=(2, 3), episodes=3).save(tmp / "splits.json")
    return f, s


def run_cells(files: tuple[Path, Path], tmp: Path, method: str, monkeypatch: pytest.MonkeyPatch, *,
              shared: bool, params: tuple[str, ...] = ()) -> list[CellResult]:
    cfg = build_run_cfg(dict(method=method, features=str(files[0]), splits=str(files[1]), shifts="1", k="0,2,3",
                             seeds="0", results=str(tmp / "r"), workers=1, method_params=list(params)))
    plan = plan_grid(cfg)
    calls: list[bool] = []
    real = protocol.shared_search

    def spy(*args: Any) -> Any:
        calls.append(True)
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(protocol, "shared_search", spy)
        if not shared:
            m.setattr(protocol, "supports_in_test", lambda data, shots: False)
        out = [execute(CellTask(cell=c, level=plan.levels[c.level], overrides=dict(cfg.method_params)),
                       plan.features) for c in plan.cells]
    assert all(r.status == "ok" for r in out), [r.error for r in out]
    assert len(calls) == (len(out) if shared else 0)
    return out


def assert_same(a: list[CellResult], b: list[CellResult]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.metrics == y.metrics
        assert x.episodes == y.episodes


def test_shared_search_equals_per_episode_path_exactly(fakes: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    files = inputs(tmp_path, integer=True)
    new = run_cells(files, tmp_path, "fake_fewonly", monkeypatch, shared=True)
    old = run_cells(files, tmp_path, "fake_fewonly", monkeypatch, shared=False)
    assert_same(new, old)
    rows = {(r.variant, r.k, r.metric): r for r in new[0].metrics}
    assert rows[("raw", 3, "map@r")].n_queries == 10 * 13 and rows[("raw", 3, "map@r")].knn_k == 12
    assert rows[("", 2, "accuracy")].n_episodes == 3
    assert len(new[0].episodes) == 2 * 3 * 2 * 6  # k x episodes x variants x metrics
    assert 0.0 < (rows[("raw", 2, "recall@1")].value or 0.0) < 1.0  # not a degenerate layout
    again = run_cells(files, tmp_path, "fake_fewonly", monkeypatch, shared=True)
    assert_same(new, again)  # deterministic


@pytest.mark.parametrize("method, params", [("pretrained", ()), ("margin", ("iterations=20",))])
def test_real_methods_agree_on_float_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                              params: tuple[str, ...]) -> None:
    files = inputs(tmp_path, integer=False)
    new = run_cells(files, tmp_path, method, monkeypatch, shared=True, params=params)
    old = run_cells(files, tmp_path, method, monkeypatch, shared=False, params=params)
    assert_same(new, old)  # float32 rounding could only swap neighbours closer than ~1e-6: none at this size
    assert {r.k for r in new[0].metrics} == {0, 2, 3}


def test_methods_that_adapt_keep_the_per_episode_path(fakes: None, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = inputs(tmp_path, integer=True)
    run_cells(files, tmp_path, "fake_proj", monkeypatch, shared=False)  # asserts shared_search is not called


def test_shared_search_only_where_it_pays_off() -> None:
    """All-way 2-shot episodes share one search; 2-way episodes over a 20-class pool would search nearly every row,
    and 6-shot all-way episodes (half the rows are support, as 10-shot Omniglot) look past too many rows."""
    from oodml.eval.protocol import EvalData

    fs = make_blobs(n_classes=20, per_class=12, dim=6)
    test_rows = np.arange(len(fs.labels))
    all_way = [np.concatenate([test_rows[fs.labels == c][:2] for c in range(20)])]
    two_way = [np.concatenate([test_rows[fs.labels == c][:2] for c in (0, 1)])]
    half = [np.concatenate([test_rows[fs.labels == c][:6] for c in range(20)])]
    data = EvalData(fs.labels, test_rows, supports={2: all_way, 3: two_way, 6: half})
    assert protocol.shared_search_pays_off(data, 2)
    assert not protocol.shared_search_pays_off(data, 3)
    assert not protocol.shared_search_pays_off(data, 6)
