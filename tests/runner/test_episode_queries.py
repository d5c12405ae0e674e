"""`queries` (most queries per k-shot episode): a random draw of the episode's queries that depends on the level, k
and the episode only, so every method and seed is scored on the same queries; cells with the cap share the source
fit of cells without it, and cells without it keep their ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.eval.protocol import EvalData, episode_queries, query_mask
from oodml.features.io import FeatureSet
from oodml.runner import plan_grid
from oodml.runner.cell import CellResult, CellTask, execute
from tests.conftest import make_blobs
from tests.runner.fakes import build_split


def data(cap: int | None, key: str = "L1") -> EvalData:
    fs = make_blobs(n_classes=5, per_class=30, dim=4)
    rows = np.arange(len(fs.labels))
    supports = [np.concatenate([rows[fs.labels == c][e:e + 2] for c in range(5)]) for e in range(3)]
    return EvalData(fs.labels, rows, supports={2: supports}, max_queries=cap, query_key=key)


def test_capped_queries_are_a_fixed_random_subset_of_the_episode_queries() -> None:
    capped, full = data(40), data(None)
    masks = []
    for e, support in enumerate(full.supports[2]):
        everything = query_mask(full, support)
        assert int(everything.sum()) == 5 * 28
        assert np.array_equal(episode_queries(full, 2, e, support), everything)  # no cap: every query
        m = episode_queries(capped, 2, e, support)
        assert int(m.sum()) == 40 and not (m & ~everything).any()  # 40 of the episode's own queries
        assert np.array_equal(m, episode_queries(data(40), 2, e, support))  # the same draw every time it is asked
        masks.append(m)
    assert not np.array_equal(masks[0], masks[1])  # each episode draws its own
    other_level = episode_queries(data(40, key="L2"), 2, 0, full.supports[2][0])
    assert not np.array_equal(other_level, masks[0])
    assert np.array_equal(episode_queries(data(500), 2, 0, full.supports[2][0]), query_mask(full, full.supports[2][0]))


def files(tmp: Path) -> tuple[Path, Path]:
    fs = make_blobs(n_classes=12, per_class=14, dim=6, seed=3, spread=2.0)
    f = fs.save(tmp / "feats.npz")
    return f, build_split(FeatureSet.load(f), levels=1, ks=(2, 3), episodes=2).save(tmp / "splits.json")


def run(tmp: Path, method: str, queries: int | None, fits: Path, params: tuple[str, ...] = ()) -> CellResult:
    f, s = files(tmp)
    cfg = build_run_cfg(dict(method=method, features=str(f), splits=str(s), shifts="1", k="0,2,3", seeds="0",
                             results=str(tmp / "r"), workers=1, queries=queries, method_params=list(params)))
    plan = plan_grid(cfg)
    (cell,) = plan.cells
    assert cell.queries == queries
    out = execute(CellTask(cell=cell, level=plan.levels[1], overrides=dict(cfg.method_params),
                           fit_cache=str(fits)), plan.features)
    assert out.status == "ok", out.error
    return out


def test_cells_with_a_cap_score_that_many_queries_and_reuse_the_uncapped_fit(tmp_path: Path) -> None:
    fits = tmp_path / "fits"
    full = run(tmp_path, "margin", None, fits, ("iterations=5",))
    capped = run(tmp_path, "margin", 7, fits, ("iterations=5",))
    assert not full.fit_cached and capped.fit_cached  # the cap changes the evaluation, not the fit
    assert len(list(fits.glob("*.pt"))) == 1
    n = {(r.k, r.metric): r.n_queries for r in full.metrics if r.variant == ""}
    m = {(r.k, r.metric): r.n_queries for r in capped.metrics if r.variant == ""}
    assert m[(2, "accuracy")] == m[(3, "map@r")] == 7 < n[(3, "map@r")]
    assert m[(0, "recall@1")] == n[(0, "recall@1")]  # zero-shot retrieval keeps every test image
    # paired: two methods see the same queries; the non-adapting `pretrained` takes the per-episode path here
    a = run(tmp_path, "pretrained", 7, fits)
    b = run(tmp_path, "pretrained", 7, fits)
    assert a.episodes == b.episodes


def test_cell_ids_without_a_cap_are_unchanged_and_capped_ones_differ(tmp_path: Path) -> None:
    f, s = files(tmp_path)
    base = dict(method="margin", features=str(f), splits=str(s), shifts="1", k="2", seeds="0",
                results=str(tmp_path / "r"))
    plain = plan_grid(build_run_cfg(base)).cells[0]
    capped = plan_grid(build_run_cfg(dict(base, queries=7))).cells[0]
    assert plain.fit_id == capped.fit_id and plain.cell_id != capped.cell_id
    assert "queries" not in build_run_cfg(base).to_dict()  # so the hashes of earlier studies stay put
    assert build_run_cfg(dict(base, queries=7)).to_dict()["queries"] == 7
    with pytest.raises(OodmlError, match="--queries must be >= 1"):
        build_run_cfg(dict(base, queries=0))


def test_cell_ids_keep_their_formula() -> None:
    """Committed results are found by cell id: a cell without `queries` is named from exactly these nine keys."""
    import hashlib

    from oodml.config import canonical_json
    from oodml.runner.plan import Cell

    key = {"dataset": "omniglot", "backbone": "pixels28", "feature_hash": "f" * 40, "regime": "full",
           "method": "adapted_proto", "method_params": '{"lr":0.0001}', "level": 3, "split_hash": "a" * 16, "seed": 1}
    cell = Cell(dataset="omniglot", backbone="pixels28", feature_hash="f" * 40, regime="full", method="adapted_proto",
                params_json='{"lr":0.0001}', level=3, split_hash="a" * 16, seed=1, shots=(1, 5),
                fit_json='{"method":"protonet","params":{"lr":0.0001}}')
    digest = hashlib.sha1(canonical_json(key).encode()).hexdigest()[:16]
    assert cell.cell_id == f"adapted_proto_L3_s1_{digest}"
    assert cell.fit_id.startswith("protonet_L3_s1_") and cell.fit_id != f"protonet_L3_s1_{digest}"
    assert cell.seed_key() == {k: v for k, v in key.items() if k not in ("method", "method_params")}
