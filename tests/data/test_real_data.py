"""Every loader against the real shared copies (../shared/data): counts, class names, conventional split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from oodml.data import load_dataset
from oodml.data.files import file_digests
from oodml.data.omniglot import ASSET, SMALL1
from oodml.errors import OodmlError

pytestmark = pytest.mark.data


def test_omniglot_small_is_the_packaged_official_zip() -> None:
    assert file_digests(ASSET) == {"md5": SMALL1.md5, "sha256": SMALL1.sha256}
    ds = load_dataset("omniglot_small")
    assert len(ds) == 2720 and len(ds.class_names) == 136 and ds.class_split is None
    alphabets = {c.split("/")[0] for c in ds.class_names}
    assert alphabets == {"Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert set(ds.class_counts()) == {20}
    assert ds.paths[0] == "images_background_small1/Balinese/character01/0108_01.png"
    img = ds.open(0)
    assert img.mode == "L" and img.size == (105, 105)


def test_omniglot_counts_split_and_note(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = load_dataset("omniglot", shared_data / "omniglot")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum differs from the official" in err  # the rebuilt main zips
    assert len(ds) == 32460 and len(ds.class_names) == 1623 and set(ds.class_counts()) == {20}
    assert Counter(ds.class_split) == {"train": 964, "test": 659}
    split = dict(zip(ds.class_names, ds.class_split))
    assert split["Arcadian/character01"] == "train" and split["Angelic/character01"] == "test"
    assert "images_background/Arcadian/character01/0001_01.png" in ds.paths
    assert len({c.split("/")[0] for c in ds.class_names}) == 50


def test_omniglot_rotations_are_extra_classes(shared_data: Path) -> None:
    ds = load_dataset("omniglot", shared_data / "omniglot", rotations=True)
    assert len(ds) == 4 * 32460 and len(ds.class_names) == 4 * 1623
    assert Counter(ds.class_split) == {"train": 4 * 964, "test": 4 * 659}
    base = ds.paths.index("images_background/Arcadian/character01/0001_01.png")
    rot = ds.paths.index("images_background/Arcadian/character01/0001_01.png@rot90")
    assert ds.class_names[ds.labels[rot]] == "Arcadian/character01@rot90"
    a, b = np.asarray(ds.open(base)), np.asarray(ds.open(rot))
    assert np.array_equal(np.rot90(a), b) and not np.array_equal(a, b)


def test_mnist_full(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = load_dataset("mnist", shared_data / "mnist")
    assert capsys.readouterr().err == ""  # all four files are the official ones
    assert len(ds) == 70000 and ds.class_names == [str(d) for d in range(10)]
    assert ds.class_split == ["train"] * 5 + ["test"] * 5
    assert ds.class_counts().tolist() == [5923 + 980, 6742 + 1135, 5958 + 1032, 6131 + 1010, 5842 + 982,
                                          5421 + 892, 5918 + 958, 6265 + 1028, 5851 + 974, 5949 + 1009]
    img = ds.open(ds.paths.index("train/00000"))
    assert img.size == (28, 28) and ds.class_names[ds.labels[ds.paths.index("train/00000")]] == "5"


def test_mnist_t10k_only_root_warns_once(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).symlink_to(shared_data / "mnist" / name)
    ds = load_dataset("mnist", tmp_path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning:") and "10,000" in err
    assert len(ds) == 10000 and ds.paths[0] == "t10k/00000" and ds.class_counts()[0] == 980


def test_mnist_corrupt_file(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "t10k-labels-idx1-ubyte.gz").symlink_to(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(OodmlError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_cub200_subset_from_the_archive(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = load_dataset("cub200", shared_data / "cub200_subset")
    assert "CUB_200_2011_subset050.tgz: checksum differs from the official" in capsys.readouterr().err
    assert len(ds) == 2889 and len(ds.class_names) == 50
    assert ds.class_names[0] == "001.Black_footed_Albatross" and ds.class_names[-1] == "050.Eared_Grebe"
    assert ds.class_split == ["train"] * 50  # classes 1-100 are the conventional train classes
    assert 41 <= ds.class_counts().min() and ds.class_counts().max() <= 60
    assert ds.paths[0] == "001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg"
    sub = ds.subset_classes(["00[1-3].*"])
    assert sub.class_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert len(sub) == int(ds.class_counts()[:3].sum())
    assert ds.open(0).mode == "RGB" and sub.content_hash() != ds.content_hash()
