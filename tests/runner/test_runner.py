"""Runner with fake methods, in this process: grid expansion, validation (exit 2, nothing written), the store,
skip/force/resume, error rows, the fit cache, determinism."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oodml.config import RunCfg, build_run_cfg
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.runner import CellStore, plan_grid, run_grid
from oodml.runner.store import method_label
from oodml.schema import CLASS_UNIT_COLUMNS, EPISODE_UNIT_COLUMNS, ROW_COLUMNS, unit_entries
from oodml.splits.spec import SplitSpec
from tests.runner.fakes import FIT_CALLS, build_split, fake_methods, write_inputs

VOLATILE = ("created_at", "wall_time_s", "peak_mem_mb", "git_sha")


@pytest.fixture
def fakes() -> Iterator[None]:
    with fake_methods():
        yield


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, ks=(2, 3))


def cfg(files: tuple[Path, Path], results: Path, **kw: Any) -> RunCfg:
    opts: dict[str, Any] = dict(method="fake_proj", features=str(files[0]), splits=str(files[1]), shifts="1..2",
                                k="0,2", seeds="0..1", results=str(results), workers=1)
    opts.update(kw)
    return build_run_cfg(opts)


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def all_rows(results: Path) -> list[dict[str, Any]]:
    return sorted((r for c in CellStore(results).cells() for r in stable(c["rows"])),
                  key=lambda r: (r["cell_id"], r["method"], r["k_shot"], str(r["metric"])))


def test_grid_counts_one_cell_per_method_level_seed(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    plan = plan_grid(cfg(files, tmp_path / "r", method="fake_proj,fake_few*", shifts="all", seeds="0..2"))
    assert len(plan.cells) == 2 * 3 * 3
    assert {c.shots for c in plan.cells} == {(0, 2)}
    assert len({c.cell_id for c in plan.cells}) == 18
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("opts, needle", [
    ({"shifts": "1..99"}, "levels 1..3"),
    ({"shifts": "4"}, "levels 1..3"),
    ({"method": "nosuch"}, "unknown method"),
    ({"k": "0,5"}, "available k: 0, 2, 3"),
    ({"dataset": "cars196"}, "not --dataset"),
])
def test_bad_input_exits_2_before_writing(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                         opts: dict[str, Any], needle: str) -> None:
    with pytest.raises(OodmlError, match=needle):
        run_grid(cfg(files, tmp_path / "r", **opts))
    assert not (tmp_path / "r").exists()


def test_split_for_other_features_is_rejected(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    other, _ = write_inputs(tmp_path / "other", n_classes=12, per_class=7)
    with pytest.raises(OodmlError, match="built on features .* --features"):
        run_grid(cfg((other, files[1]), tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_same_features_rounded_differently_run_with_a_note(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # the split file's features embedded again on another kind of CPU: ~1e-7 relative differences, another hash.
    # The level FIDs agree to that precision, so the grid runs (with a note); a real difference is still an error.
    from oodml.splits.frechet import frechet_distance

    fs = FeatureSet.load(files[0])
    spec = SplitSpec.load(files[1])
    spec.levels = spec.levels[:1]
    means, index = fs.class_means(), fs.class_index()
    for lv in spec.levels:
        lv.fid = frechet_distance(means[[index[c] for c in lv.train_classes]],
                                  means[[index[c] for c in lv.test_classes]])
    split = spec.save(tmp_path / "real_fid.json")
    g = np.random.default_rng(0)
    for scale, ok in ((1e-7, True), (1e-2, False)):
        moved = FeatureSet(fs.features * (1 + scale * g.standard_normal(fs.features.shape)).astype(np.float32),
                           fs.labels, fs.class_names, fs.paths, dict(fs.meta))
        path = moved.save(tmp_path / f"moved_{scale}.npz")
        assert moved.hash != fs.hash
        if ok:
            plan = plan_grid(cfg((path, split), tmp_path / "r", shifts="1"))
            assert plan.feature_hash == moved.hash
            assert "the level FIDs agree to" in capsys.readouterr().err
        else:
            with pytest.raises(OodmlError, match="built on features .* has FID .* --features"):
                plan_grid(cfg((path, split), tmp_path / "r", shifts="1"))


def test_backbone_option_is_for_the_full_regime(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(OodmlError, match="differs from the features' backbone .* --regime full"):
        plan_grid(cfg(files, tmp_path / "r", backbone="conv4"))
    with pytest.raises(OodmlError, match="unknown backbone 'conv5'"):
        plan_grid(cfg(files, tmp_path / "r", backbone="conv5", regime="full"))
    same = plan_grid(cfg(files, tmp_path / "r", backbone=FeatureSet.load(files[0]).backbone))
    assert {c.backbone for c in same.cells} == {FeatureSet.load(files[0]).backbone}
    assert not (tmp_path / "r").exists()


def test_run_writes_ok_cells_with_schema_rows(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    assert run_grid(cfg(files, tmp_path / "r")) == 0
    cells = CellStore(tmp_path / "r").cells()
    assert len(cells) == 4 and {c["status"] for c in cells} == {"ok"}
    c = cells[0]
    assert set(c) >= {"cell_id", "status", "error", "config", "rows", "episodes", "provenance"}
    assert all(tuple(r) == ROW_COLUMNS for r in c["rows"])
    # per-unit values are tables: the column names once, one list per entry
    assert c["episodes"]["columns"] == list(EPISODE_UNIT_COLUMNS)
    assert c["classes"]["columns"] == list(CLASS_UNIT_COLUMNS)
    episodes, classes = unit_entries(c["episodes"]), unit_entries(c["classes"])
    zero = {(r["method"], r["metric"]) for r in c["rows"] if r["k_shot"] == 0}
    assert zero == {(m, x) for m in ("fake_proj", "fake_proj[raw]")
                    for x in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")}
    two = [r for r in c["rows"] if r["k_shot"] == 2]
    assert {r["metric"] for r in two} == {"accuracy", "recall@1", "recall@2", "recall@4", "recall@8", "map@r"}
    assert all(r["n_episodes"] == 2 and 0 <= r["value"] <= 1 and r["episode_std"] >= 0 for r in two)
    # mean over the per-episode rows
    acc = next(r for r in two if r["metric"] == "accuracy" and r["method"] == "fake_proj")
    eps = [e["value"] for e in episodes if e["metric"] == "accuracy" and e["variant"] == ""]
    assert len(eps) == 2 and acc["value"] == pytest.approx(sum(eps) / 2)
    # zero-shot: each retrieval metric per test class; the n_queries-weighted class mean is the stored value
    assert classes and {x["metric"] for x in classes} == {"recall@1", "recall@2", "recall@4", "recall@8",
                                                                     "map@r"}
    r1 = next(r for r in c["rows"] if r["k_shot"] == 0 and r["metric"] == "map@r" and r["method"] == "fake_proj")
    mine = [x for x in classes if x["metric"] == "map@r" and x["variant"] == ""]
    n = sum(x["n_queries"] for x in mine)
    assert n == r1["n_queries"] and sum(x["value"] * x["n_queries"] for x in mine) / n == pytest.approx(r1["value"])
    r0 = c["rows"][0]
    assert r0["config_hash"] == c["config_hash"] and json.loads(r0["config_json"])["seeds"] == [r0["seed"]]
    assert r0["method_family"] == "baseline" and json.loads(r0["method_params"]) == {"dim": 4}
    assert r0["split_fid"] in [lv.fid for lv in SplitSpec.load(files[1]).levels] and r0["n_train_classes"] == 6 and r0["wall_time_s"] > 0
    assert c["provenance"]["oodml_version"] and "torch" in c["provenance"]["libraries"]
    assert c["provenance"]["host"]["cpu"] and c["provenance"]["host"]["torch_cpu_capability"]  # which CPU kind
    assert not list((tmp_path / "r" / "cells").glob("*.tmp"))


def test_rerun_skips_finished_and_force_recomputes(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run_grid(cfg(files, tmp_path / "r"))
    first = all_rows(tmp_path / "r")
    assert FIT_CALLS["fake_proj"] == 4
    assert run_grid(cfg(files, tmp_path / "r")) == 0
    assert "skipped 4 finished, 0 remaining" in capsys.readouterr().err
    assert FIT_CALLS["fake_proj"] == 4
    assert run_grid(cfg(files, tmp_path / "r", force=True)) == 0
    assert "skipped 0 finished, 4 remaining" in capsys.readouterr().err
    assert FIT_CALLS["fake_proj"] == 8  # --force refits too
    assert all_rows(tmp_path / "r") == first  # same seeds, same numbers


def test_more_k_reuses_the_fit_cache_and_keeps_old_rows(fakes: None, files: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    run_grid(cfg(files, tmp_path / "r", k="0", seeds="0", shifts="1"))
    before = all_rows(tmp_path / "r")
    run_grid(cfg(files, tmp_path / "r", k="3", seeds="0", shifts="1"))
    assert FIT_CALLS["fake_proj"] == 1
    (cell,) = CellStore(tmp_path / "r").cells()
    assert cell["fit_cached"] and cell["config"]["ks"] == [0, 3]
    after = all_rows(tmp_path / "r")
    assert [r for r in after if r["k_shot"] == 0] == [{**r, "config_hash": after[0]["config_hash"],
                                                      "config_json": after[0]["config_json"]} for r in before]
    # a cell computed from the cache equals one fitted from scratch
    run_grid(cfg(files, tmp_path / "clean", k="0,3", seeds="0", shifts="1"))
    assert all_rows(tmp_path / "clean") == after


def test_failing_cell_is_stored_as_error_and_grid_goes_on(fakes: None, files: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    assert run_grid(cfg(files, tmp_path / "r", method="fake_boom,fake_proj", seeds="0", shifts="1")) == 1
    cells = {c["config"]["methods"][0]: c for c in CellStore(tmp_path / "r").cells()}
    assert cells["fake_proj"]["status"] == "ok"
    boom = cells["fake_boom"]
    assert boom["status"] == "error" and "boom in fit" in boom["error"] and "Traceback" in boom["traceback"]
    assert {r["status"] for r in boom["rows"]} == {"error"} and {r["k_shot"] for r in boom["rows"]} == {0, 2}
    assert all(r["error"] == boom["error"] and tuple(r) == ROW_COLUMNS for r in boom["rows"])
    # error cells are retried on the next run, finished ones skipped
    assert run_grid(cfg(files, tmp_path / "r", method="fake_boom,fake_proj", seeds="0", shifts="1")) == 1
    assert FIT_CALLS["fake_proj"] == 1


def test_no_zero_shot_method_stores_k0_as_skipped(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    assert run_grid(cfg(files, tmp_path / "r", method="fake_fewonly", seeds="0", shifts="1")) == 0
    (c,) = CellStore(tmp_path / "r").cells()
    assert c["status"] == "ok"
    assert {r["status"] for r in c["rows"] if r["k_shot"] == 0} == {"skipped"}
    assert {r["status"] for r in c["rows"] if r["k_shot"] == 2} == {"ok"}
    assert run_grid(cfg(files, tmp_path / "r2", method="fake_fewonly", seeds="0", shifts="1", k="0")) == 0
    assert CellStore(tmp_path / "r2").cells()[0]["status"] == "skipped"


def test_episode_ids_may_be_basenames(fakes: None, tmp_path: Path) -> None:
    f, s = write_inputs(tmp_path, basenames=True)
    assert run_grid(cfg((f, s), tmp_path / "r", seeds="0", shifts="1")) == 0
    (c,) = CellStore(tmp_path / "r").cells()
    assert c["status"] == "ok" and unit_entries(c["episodes"])


def test_unknown_episode_id_is_a_clear_error(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    doc = json.loads(files[1].read_text())
    ep = doc["levels"][0]["episodes"]["2"][0]
    first = sorted(ep)[0]
    ep[first][0] = "nowhere/missing.png"
    files[1].write_text(json.dumps(doc))
    with pytest.raises(OodmlError, match="lacks 1 of the .* image ids .* 'nowhere/missing.png' of class"):
        run_grid(cfg(files, tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_method_label() -> None:
    assert method_label("margin+dmml", "ensemble") == "margin+dmml[ensemble]"
    assert method_label("margin", "") == "margin"


def test_defaults_split_file_from_dataset_and_cached_features(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No --splits: splits/<dataset>.json; no --features: the cached features named by the split's feature_hash."""
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "features" / "synthetic" / "none-0123.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(files[0].read_bytes())
    (tmp_path / "work" / "splits").mkdir(parents=True)
    (tmp_path / "work" / "splits" / "synthetic.json").write_bytes(files[1].read_bytes())
    monkeypatch.chdir(tmp_path / "work")
    c = build_run_cfg(dict(method="fake_proj", dataset="synthetic", shifts="1", k="0", seeds="0", workers=1,
                           results="res"))
    plan = plan_grid(c)
    assert plan.features_path == cached and plan.splits_path == Path("splits/synthetic.json")
    assert run_grid(c) == 0 and len(CellStore("res").cells()) == 1
    with pytest.raises(OodmlError, match="oodml make-splits cars196"):
        plan_grid(build_run_cfg(dict(method="fake_proj", dataset="cars196", results="res2")))


def test_split_of_features_oodml_cannot_compute_says_where_they_come_from(
        fakes: None, files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the Scott et al. split files name raw-pixel features written by baselines/scott2018_splits.py: on a fresh
    # machine (empty cache) the run must say so, not fail on "unknown backbone 'pixels28'"
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    spec = SplitSpec.load(files[1])
    spec.backbone, spec.source = "pixels28", "oodml 0.1.0 baselines/scott2018_splits.py"
    split = spec.save(tmp_path / "scott.json")
    c = build_run_cfg(dict(method="fake_proj", splits=str(split), shifts="1", k="0", seeds="0", results="res"))
    with pytest.raises(OodmlError, match="not a registered backbone.*baselines/scott2018_splits.py"):
        plan_grid(c)


def test_report_reads_the_store(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    """The reporter accepts what the runner writes, error cells included."""
    from oodml.report import build_report

    assert run_grid(cfg(files, tmp_path / "r", method="fake_proj,fake_boom", shifts="1..2", seeds="0")) == 1
    written = build_report(results=tmp_path / "r", metric=None)
    names = {p.name for p in written}
    assert "all.csv" in names and "leaderboard_k0.csv" in names and "leaderboard_k2.csv" in names


def test_adapted_and_addon_variants_fit_from_the_same_source_seed(files: tuple[Path, Path], tmp_path: Path) -> None:
    # `adapted_margin` fits the very model `margin` fits (same init and batches), so their zero-shot rows are equal
    # and the adapted gain is adaptation alone; `margin+sec` starts from the same init but trains another objective
    methods = "margin,adapted_margin,margin+sec"
    c = cfg(files, tmp_path / "r", method=methods, shifts="1", k="0", seeds="0",
            method_params={"iterations": 15, "adapt_iterations": 3})
    assert run_grid(c) == 0
    by_method: dict[str, dict[str, float]] = {}
    for cell in CellStore(tmp_path / "r").cells():
        by_method[cell["config"]["methods"][0]] = {r["metric"]: r["value"] for r in cell["rows"] if r["k_shot"] == 0}
    assert set(by_method) == {"margin", "adapted_margin", "margin+sec"}
    assert by_method["margin"] == by_method["adapted_margin"]
    assert by_method["margin"] != by_method["margin+sec"]


def _small_omniglot_features(tmp: Path, *, n_classes: int = 12, per_class: int = 4, corrupt: str = "") -> Path:
    """Random features for part of the embedded omniglot_small images (the first `per_class` of `n_classes`)."""
    from oodml.data import load_dataset

    ds = load_dataset("omniglot_small")
    rows = [r for c in range(n_classes) for r in np.flatnonzero(ds.labels == c)[:per_class]]
    paths = [ds.paths[r] for r in rows]
    names = [ds.class_names[c] for c in range(n_classes)]
    if corrupt == "path":
        paths[5] = paths[5].replace(".png", "_x.png")
    elif corrupt == "class":
        names[0], names[1] = names[1], names[0]
    labels = np.asarray(ds.labels[rows], dtype=np.int64)
    feats = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
    meta = {"dataset": "omniglot_small", "backbone": "pixels28", "transform": "none"}
    fs = FeatureSet(feats, labels, np.array(names), np.array(paths), meta, None).sorted()
    f = fs.save(tmp / "feats.npz")
    return f


@pytest.mark.parametrize("corrupt, needle", [("", ""), ("path", "is not among the omniglot_small images"),
                                             ("class", "in the features file but")])
def test_full_regime_accepts_features_of_part_of_the_images(fakes: None, tmp_path: Path, corrupt: str,
                                                            needle: str) -> None:
    # a features file of some classes and some of their images (embed --classes, Scott's MNIST subset) trains in
    # the full regime; an image id the dataset lacks, or one filed under another class, is rejected before running
    f = _small_omniglot_features(tmp_path, corrupt=corrupt)
    s = build_split(FeatureSet.load(f), levels=2).save(tmp_path / "splits.json")
    run = cfg((f, s), tmp_path / "r", backbone="conv4", regime="full")
    if not needle:
        plan = plan_grid(run)
        assert len(plan.cells) == 4 and {c.backbone for c in plan.cells} == {"conv4"}
        return
    with pytest.raises(OodmlError, match=needle):
        plan_grid(run)
