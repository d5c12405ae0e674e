"""Scott et al.'s task sampling (oodml.splits.scott) and the split file's optional `val_images`."""

from __future__ import annotations

import hashlib
import json

from pathlib import Path

import numpy as np
import pytest

from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.splits.levels import ImageIndex, resolve_level
from oodml.splits.scott import mnist_source_images, omniglot_replications
from oodml.splits.spec import Level

IDS = {f"a/c{c:03d}@rot{r}" if r else f"a/c{c:03d}": [f"a/c{c:03d}/{i:02d}.png@{r}" for i in range(20)]
       for c in range(30) for r in (0, 90)}


def _fid(source: list[str], target: list[str]) -> float:
    return int(hashlib.sha1(" ".join(source + target).encode()).hexdigest()[:8], 16) / 1e6  # distinct per draw


def _levels(**kw: object) -> list[Level]:
    args = dict(ways=5, ks=(1, 5), replications=4, episodes=2, fid=_fid, key=("t", 0))
    args.update(kw)
    return omniglot_replications(IDS, **args)  # type: ignore[arg-type]


def test_omniglot_replications_follow_their_reader() -> None:
    levels = _levels()
    assert [lv.level for lv in levels] == [1, 2, 3, 4]
    assert all(a.fid < b.fid for a, b in zip(levels, levels[1:]))
    names = set(IDS)
    for lv in levels:
        lv.check()
        assert len(lv.test_classes) == len(lv.train_classes) == 5
        assert set(lv.train_classes) | set(lv.test_classes) | set(lv.removed_classes) == names
        assert set(lv.val_images) == set(lv.train_classes)
        assert all(len(v) == 5 and set(v) <= set(IDS[c]) for c, v in lv.val_images.items())  # 15 train, 5 val
        for k in ("1", "5"):
            assert len(lv.episodes[k]) == 2
            assert all(set(ep) == set(lv.test_classes) and all(len(s) == int(k) for s in ep.values())
                       for ep in lv.episodes[k])
    # target classes are drawn over all classes, rotated ones included, and differ between replications
    drawn = {c for lv in levels for c in lv.test_classes}
    assert any("@rot" in c for c in drawn) and len({tuple(lv.test_classes) for lv in levels}) == 4


def test_omniglot_replications_deterministic_and_keyed() -> None:
    a = [lv.to_dict() for lv in _levels()]
    assert a == [lv.to_dict() for lv in _levels()]
    assert a != [lv.to_dict() for lv in _levels(key=("t", 1))]
    with pytest.raises(OodmlError, match="need 62 classes"):
        _levels(ways=31)


def test_mnist_source_sizes() -> None:
    ids = [f"train/{i}/{j}.png" for i in range(5) for j in range(3000)]
    train, val = mnist_source_images(ids, key=("m", 0))
    assert len(train) == 8000 and len(val) == 3000 and not set(train) & set(val)
    assert (train, val) == mnist_source_images(ids, key=("m", 0))
    assert train != mnist_source_images(ids, key=("m", 1))[0]


def test_val_images_round_trip_resolve_and_old_files_unchanged() -> None:
    lv = Level(level=1, fid=1.0, train_classes=["a", "b"], test_classes=["c"])
    before = json.dumps(lv.to_dict())
    assert "val_images" not in before  # files without it are written as before
    lv.val_images = {"a": ["a/2.png"], "b": ["b/1.png"]}
    d = lv.to_dict()
    assert Level.from_dict(json.loads(json.dumps(d))).val_images == lv.val_images
    assert lv.split_hash() != Level.from_dict(json.loads(before)).split_hash()
    paths = np.array(["a/1.png", "a/2.png", "b/1.png", "b/2.png", "c/1.png", "c/2.png"])
    fs = FeatureSet(np.zeros((6, 2), np.float32), np.array([0, 0, 1, 1, 2, 2]), np.array(["a", "b", "c"]), paths,
                    {"dataset": "x"})
    data = resolve_level(fs, ImageIndex(fs), lv, ())
    assert data.val_rows.tolist() == [1, 2] and data.train_rows.tolist() == [0, 1, 2, 3]
    with pytest.raises(OodmlError, match="val_images must name train classes"):
        Level(level=1, fid=1.0, train_classes=["a"], test_classes=["c"], val_images={"c": ["c/1.png"]}).check()


def test_cell_holds_val_images_out_and_keeps_every_train_class(tmp_path: Path) -> None:
    from oodml.config import build_run_cfg
    from oodml.runner import CellStore, run_grid
    from oodml.splits.spec import SplitSpec
    from tests.runner.fakes import write_inputs

    feats, splits = write_inputs(tmp_path, ks=(2,))
    spec = SplitSpec.load(splits)
    fs = FeatureSet.load(feats)
    lv = spec.levels[0]
    ids = {c: sorted(str(p) for p, lab in zip(fs.paths, fs.labels) if fs.class_names[lab] == c)
           for c in lv.train_classes}
    lv.val_images = {c: v[:2] for c, v in ids.items()}  # two validation images of every train class
    spec.save(splits)
    c = build_run_cfg(dict(method="margin", features=str(feats), splits=str(splits), shifts="1", k="0", seeds="0",
                           results=str(tmp_path / "r"), workers=1,
                           method_params={"iterations": 4, "select": "val", "select_every": 2, "batch_size": 8}))
    assert run_grid(c) == 0
    (cell,) = CellStore(tmp_path / "r").cells()
    fit = cell["training"]["fit"]
    assert [i for i, _ in fit["val_curve"]] == [2, 4] and fit["kept_iteration"] in (2, 4)
    assert cell["rows"][0]["n_train_classes"] == len(lv.train_classes)
