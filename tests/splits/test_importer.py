"""ooDML pickle import: the real CARS196 file (data) and refused malicious pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oodml.cli import app
from oodml.errors import OodmlError
from oodml.splits.importer import CarsIds, import_splits_command, safe_load
from oodml.splits.spec import SplitSpec

CARS_FIDS = [8.5912, 14.3345, 32.1780, 43.5843, 63.2861, 86.1238, 101.1723, 123.0311]
CARS_COUNTS = [98, 98, 98, 98, 98, 86, 74, 62]


class _Payload:
    """Pickles into a call of os.system: what a hostile split file would contain."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_with_exit_2(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({1: {"train": [], "test": [], "fid": _Payload(marker)}}))
    res = CliRunner().invoke(app, ["import-splits", str(evil), "--dataset", "cars196",
                                   "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2
    assert "error: refusing to load the pickle" in res.output and "posix.system" in res.output
    assert not marker.exists() and not (tmp_path / "x.json").exists()


def test_object_dtype_and_other_globals_are_refused() -> None:
    with pytest.raises(OodmlError, match="not allowed"):
        safe_load(pickle.dumps(np.array([1, 2])))  # needs numpy's array reconstructor: not a split pickle
    with pytest.raises(OodmlError, match="not allowed"):
        safe_load(pickle.dumps(np.dtype(object)))
    with pytest.raises(OodmlError, match="refusing"):
        safe_load(b"not a pickle")


def test_numpy_scalars_and_containers_load() -> None:
    obj = {1: {"train": [np.str_("a"), np.str_("b")], "fid": np.float64(1.5), "n": [np.int64(3), True]}}
    assert safe_load(pickle.dumps(obj, protocol=3)) == obj


def test_not_a_split_pickle(tmp_path: Path) -> None:
    p = tmp_path / "list.pkl"
    p.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(OodmlError, match="not an ooDML split pickle"):
        import_splits_command(pickle_file=p, dataset="cars196", out=tmp_path / "o.json")
    with pytest.raises(OodmlError, match="does not exist"):
        import_splits_command(pickle_file=tmp_path / "nope.pkl", dataset="cars196")


def test_unresolved_ids_keep_class_and_basename(tmp_path: Path) -> None:
    raw = {1: {"train": [np.str_("a"), np.str_("b")], "test": [np.str_("c"), np.str_("d")], "fid": np.float64(2.0),
               "split_val": [np.str_("b")],
               "test_episodes": {1: {0: {np.str_("c"): ["x.jpg"], np.str_("d"): ["y.jpg"]}}}},
           2: {"train": [np.str_("a")], "test": [np.str_("c")], "fid": np.float64(1.0), "split_val": []}}
    p = tmp_path / "toy_splits.pkl"
    p.write_bytes(pickle.dumps(raw, protocol=3))
    spec = SplitSpec.load(import_splits_command(pickle_file=p, dataset="sop", out=tmp_path / "toy.json"))
    assert [lv.fid for lv in spec.levels] == [1.0, 2.0]  # ordered by FID, not by split id
    assert spec.extra["pickle_split_ids"] == [2, 1]
    assert spec.levels[0].removed_classes == ["b", "d"]
    assert spec.levels[1].episodes == {"1": [{"c": ["c/x.jpg"], "d": ["d/y.jpg"]}]}
    assert spec.levels[1].val_classes == ["b"]


@pytest.mark.data
def test_real_cars196_pickle(shared_data: Path, tmp_path: Path) -> None:
    pkl = shared_data / "oodml_splits" / "cars196_splits.pkl"
    res = CliRunner().invoke(app, ["import-splits", str(pkl), "--dataset", "cars196", "--out",
                                   str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    spec = SplitSpec.load(tmp_path / "c.json")
    assert spec.source == "ooDML pickle 1dc38266ede56cc01275c8cb7c0c0645050e94eb88f2eb279d1e97522a39a511"
    assert [round(lv.fid, 4) for lv in spec.levels] == CARS_FIDS
    assert spec.levels[0].fid == 8.59123071237994
    assert [len(lv.train_classes) for lv in spec.levels] == CARS_COUNTS
    assert [len(lv.test_classes) for lv in spec.levels] == CARS_COUNTS
    assert [len(lv.removed_classes) for lv in spec.levels] == [0] * 5 + [24, 48, 72]
    assert [len(lv.val_classes) for lv in spec.levels] == [25] * 5 + [22, 19, 16]
    assert [lv.conventional for lv in spec.levels] == [True] + [False] * 7
    pairs: set[tuple[str, str]] = set()
    for lv in spec.levels:
        assert set(lv.episodes) == {"2", "5", "10"}
        for k, eps in lv.episodes.items():
            assert len(eps) == 10
            for ep in eps:
                assert sorted(ep) == lv.test_classes
                for cls, ids in ep.items():
                    assert len(set(ids)) == int(k)
                    pairs.update((cls, i) for i in ids)
    # README: 11,233 distinct (class, file name) pairs; each resolves to exactly one official image
    assert len(pairs) == 11233 and len({i for _, i in pairs}) == 11233
    assert all(i.startswith(("cars_train/", "cars_test/")) for _, i in pairs)
    ep = spec.levels[0].episodes["2"][0]["FIAT 500 Abarth 2012"]
    assert [i.split("/")[1] for i in ep] == ["04399.jpg", "00511.jpg"]


@pytest.mark.data
def test_cars_id_collision_convention(shared_data: Path) -> None:
    ids = CarsIds(shared_data / "cars196_annotations")
    assert ids("Ford GT Coupe 2006", "03622_2.jpg") == "cars_test/03622.jpg"
    assert ids("Ford GT Coupe 2006", "03622.jpg") == "cars_train/03622.jpg"
    with pytest.raises(OodmlError, match="not an image of that class"):
        ids("Ford GT Coupe 2006", "99999.jpg")
