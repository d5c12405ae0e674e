from pathlib import Path

import numpy as np
import pytest

from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from tests.conftest import make_blobs


def test_roundtrip_without_pickle(tmp_path: Path) -> None:
    fs = make_blobs()
    p = fs.save(tmp_path / "f.npz")
    with np.load(p, allow_pickle=False) as z:
        assert set(z.files) >= {"features", "labels", "class_names", "paths", "meta", "class_split"}
        assert z["features"].dtype == np.float32 and z["labels"].dtype == np.int64
    back = FeatureSet.load(p)
    assert back.meta["feature_hash"] == back.hash == fs.hash
    assert list(back.paths) == sorted(back.paths)
    np.testing.assert_array_equal(back.features, fs.features)


def test_hash_changes_with_content() -> None:
    fs = make_blobs()
    other = make_blobs()
    other.features[0, 0] += 1e-3
    assert fs.hash != other.hash


def test_class_means_and_selection() -> None:
    fs = make_blobs(n_classes=3, per_class=4, dim=2)
    means = fs.class_means()
    for c in range(3):
        np.testing.assert_allclose(means[c], fs.features[fs.labels == c].mean(0), rtol=1e-6)
    rows = fs.select_classes(["c001"])
    assert set(fs.labels[rows]) == {1} and len(rows) == 4
    with pytest.raises(OodmlError, match="not in the features file"):
        fs.select_classes(["zzz"])


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(OodmlError, match="does not exist"):
        FeatureSet.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(OodmlError, match="corrupt"):
        FeatureSet.load(bad)
