"""The ladder generator on tiny blobs: monotone FID, exact level FIDs, partitions, floor, episodes, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oodml.cli import app
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.splits.generate import LadderCfg, build_ladder, make_splits_command
from oodml.splits.spec import SplitSpec
from tests.conftest import make_blobs
from tests.splits.test_frechet import sqrtm_fid


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return make_blobs(n_classes=40, per_class=12, dim=16)


@pytest.fixture(scope="module")
def spec(fs: FeatureSet) -> SplitSpec:
    return build_ladder(fs, LadderCfg(levels=6, ks=(2, 5), episodes=3, seed=0))


def _means(fs: FeatureSet, names: list[str]) -> np.ndarray:
    idx = fs.class_index()
    return fs.class_means()[[idx[n] for n in names]]


def test_levels_strictly_increasing_and_spanning(spec: SplitSpec) -> None:
    fids = [lv.fid for lv in spec.levels]
    assert [lv.level for lv in spec.levels] == list(range(1, 7))
    assert all(b > a for a, b in zip(fids, fids[1:]))
    assert fids[-1] >= 3 * fids[0]


def test_level_fid_equals_independent_sqrtm(fs: FeatureSet, spec: SplitSpec) -> None:
    for lv in spec.levels:
        ref = sqrtm_fid(_means(fs, lv.train_classes), _means(fs, lv.test_classes))
        assert lv.fid == pytest.approx(ref, rel=1e-6)


def test_classes_disjoint_and_complete(fs: FeatureSet, spec: SplitSpec) -> None:
    every = set(fs.class_names.tolist())
    for lv in spec.levels:
        tr, te, rm = set(lv.train_classes), set(lv.test_classes), set(lv.removed_classes)
        assert not (tr & te or tr & rm or te & rm)
        assert tr | te | rm == every
        assert set(lv.val_classes) <= tr and len(lv.val_classes) == int(0.25 * len(tr) + 0.5)
        assert lv.train_classes == sorted(lv.train_classes)


def test_conventional_level_kept_and_marked(fs: FeatureSet, spec: SplitSpec) -> None:
    conv = [lv for lv in spec.levels if lv.conventional]
    assert len(conv) == 1
    assert set(conv[0].train_classes) == set(fs.class_names[fs.class_split == "train"].tolist())
    assert conv[0].removed_classes == []
    assert spec.extra["conventional_split"] == "class_split of the features file"
    assert spec.extra["start_level"] == conv[0].level


def test_floor_respected_and_removal_used(spec: SplitSpec) -> None:
    assert any(lv.removed_classes for lv in spec.levels)  # pushed past swap saturation
    for lv in spec.levels:
        assert len(lv.train_classes) >= 10 and len(lv.test_classes) >= 10  # half of the 20 conventional ones


def test_custom_floor(fs: FeatureSet) -> None:
    spec = build_ladder(fs, LadderCfg(levels=4, ks=(2,), episodes=1, floor_fraction=0.9))
    assert all(len(lv.train_classes) >= 18 and len(lv.test_classes) >= 18 for lv in spec.levels)


def test_episodes_exact_k_of_the_right_class(fs: FeatureSet, spec: SplitSpec) -> None:
    owner = {str(p): str(fs.class_names[lab]) for p, lab in zip(fs.paths, fs.labels)}
    for lv in spec.levels:
        assert set(lv.episodes) == {"2", "5"}
        for k, eps in lv.episodes.items():
            assert len(eps) == 3
            for ep in eps:
                assert sorted(ep) == lv.test_classes
                for cls, ids in ep.items():
                    assert len(ids) == int(k) == len(set(ids))
                    assert all(owner[i] == cls for i in ids)


def test_same_seed_byte_identical_and_other_seed_other_episodes(fs: FeatureSet, spec: SplitSpec) -> None:
    again = build_ladder(fs, LadderCfg(levels=6, ks=(2, 5), episodes=3, seed=0))
    assert again.dumps() == spec.dumps()
    other = build_ladder(fs, LadderCfg(levels=6, ks=(2, 5), episodes=3, seed=1))
    assert other.levels[0].episodes["2"] != spec.levels[0].episodes["2"]


def test_episodes_stable_when_other_options_change(fs: FeatureSet, spec: SplitSpec) -> None:
    more = build_ladder(fs, LadderCfg(levels=6, ks=(5, 2, 10), episodes=5, seed=0))
    for a, b in zip(spec.levels, more.levels):
        assert a.train_classes == b.train_classes
        assert b.episodes["2"][:3] == a.episodes["2"] and b.episodes["5"][:3] == a.episodes["5"]


def test_ways_samples_n_classes_per_episode(fs: FeatureSet) -> None:
    spec = build_ladder(fs, LadderCfg(levels=3, ks=(1,), episodes=4, ways=5))
    for lv in spec.levels:
        for ep in lv.episodes["1"]:
            assert len(ep) == 5 and set(ep) <= set(lv.test_classes)
        assert len({tuple(ep) for ep in lv.episodes["1"]}) > 1
    with pytest.raises(OodmlError, match="--ways"):
        build_ladder(fs, LadderCfg(levels=3, ks=(1,), episodes=1, ways=500))


def test_small_classes_excluded_from_large_k() -> None:
    full = make_blobs(n_classes=32, per_class=6, dim=6)
    image_no = np.array([int(p[-7:-4]) for p in full.paths])
    keep = ~((full.labels % 2 == 1) & (image_no >= 3))
    fs = FeatureSet(full.features[keep], full.labels[keep], full.class_names, full.paths[keep], full.meta,
                    full.class_split)  # odd classes keep 3 images, even ones 6
    spec = build_ladder(fs, LadderCfg(levels=3, ks=(2, 3), episodes=2))
    for lv in spec.levels:
        odd = sorted(c for c in lv.test_classes if int(c[1:]) % 2 == 1)
        assert lv.episode_excluded.get("3", []) == odd and "2" not in lv.episode_excluded
        assert all(sorted(ep) == sorted(set(lv.test_classes) - set(odd)) for ep in lv.episodes["3"])
        assert all(sorted(ep) == lv.test_classes for ep in lv.episodes["2"])


def test_missing_class_split_uses_seeded_half_split() -> None:
    fs = make_blobs(n_classes=30, per_class=5, dim=8)
    fs.class_split = None
    a = build_ladder(fs, LadderCfg(levels=3, ks=(2,), episodes=1, seed=4))
    b = build_ladder(fs, LadderCfg(levels=3, ks=(2,), episodes=1, seed=4))
    assert a.dumps() == b.dumps()
    assert a.extra["conventional_split"].startswith("random half split (seed 4)")
    assert not any(lv.conventional for lv in a.levels)  # not the dataset's usual split: not marked
    start = a.level(a.extra["start_level"])
    assert {len(start.train_classes), len(start.test_classes)} == {15} and not start.removed_classes


def test_one_sided_class_split_falls_back() -> None:
    fs = make_blobs(n_classes=20, per_class=5, dim=8)
    fs.class_split = np.array(["train"] * 20)
    spec = build_ladder(fs, LadderCfg(levels=3, ks=(2,), episodes=1))
    assert "fewer than 2 classes" in spec.extra["conventional_split"]


def test_too_many_levels_is_a_user_error() -> None:
    fs = make_blobs(n_classes=6, per_class=4, dim=3)
    with pytest.raises(OodmlError, match="--levels"):
        build_ladder(fs, LadderCfg(levels=40, ks=(1,), episodes=1))


def test_make_splits_cli_writes_ladder_and_plot(blobs_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["make-splits", "--features", str(blobs_file), "--levels", "6", "--k", "2,5",
                                   "--episodes", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    spec = SplitSpec.load(out)
    assert len(spec.levels) == 6 and spec.dataset == "synthetic"
    assert spec.feature_hash == FeatureSet.load(blobs_file).meta["feature_hash"]
    assert spec.extra["classes_from"]["features_file"] == "blobs.npz"
    assert spec.extra["classes_from"]["n_classes"] == 40
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = out.read_bytes()
    res = CliRunner().invoke(app, ["make-splits", "--features", str(blobs_file), "--levels", "6", "--k", "2,5",
                                   "--episodes", "2", "--out", str(out)])
    assert res.exit_code == 0 and out.read_bytes() == first
    assert json.loads(first)["source"].endswith("make-splits")


def test_make_splits_dataset_must_match_features(blobs_file: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["make-splits", "cub200", "--features", str(blobs_file),
                                   "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2
    assert "not 'cub200'" in res.output
    with pytest.raises(OodmlError, match="DATASET"):
        make_splits_command(dataset=None, backbone="x", data_root=None, features=None, levels=3, ks=(2,),
                            episodes=1, ways=None, seed=0, out=tmp_path / "y.json")


def test_make_splits_without_features_uses_the_feature_cache(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    import sys
    import types

    calls: list[tuple] = []

    def fake(dataset: str, backbone: str = "efficientnet_lite0", data_root: object = None,
             options: object = None, runtime: str = "auto", weights: object = None) -> FeatureSet:
        calls.append((dataset, backbone, data_root, options, runtime))
        return make_blobs(n_classes=20, per_class=4, dim=6, dataset=dataset)

    module = types.ModuleType("oodml.features.extract")
    module.load_or_compute_features = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "oodml.features.extract", module)
    path = make_splits_command(dataset="cub200", backbone="resnet50", data_root=tmp_path, features=None, levels=3,
                               ks=(2,), episodes=1, ways=None, seed=0, out=tmp_path / "cub.json",
                               dataset_options={"rotations": False}, runtime="torch")
    assert calls == [("cub200", "resnet50", tmp_path, {"rotations": False}, "torch")]
    spec = SplitSpec.load(path)
    assert spec.dataset == "cub200" and spec.extra["classes_from"]["dataset"] == "cub200"
    assert (tmp_path / "cub.png").is_file()
