"""Dataset registry, root resolution, ImageDataset behaviour on a tiny folder dataset, corrupt/missing images."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from oodml.data import DATASETS, ImageDataset, load_dataset, resolve_root
from oodml.errors import OodmlError
from tests.data.helpers import write_class_tree, write_image


def test_registry_has_every_dataset_with_a_description() -> None:
    assert DATASETS.names() == ["cars196", "cub200", "folder", "mnist", "omniglot", "omniglot_small", "sop"]
    assert all(DATASETS.info(n).description for n in DATASETS.names())
    with pytest.raises(OodmlError, match="did you mean cub200"):
        load_dataset("cub2000")


def test_resolve_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OODML_DATA", str(tmp_path / "env"))
    assert resolve_root("mnist", tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_root("mnist", None) == tmp_path / "env" / "mnist"
    monkeypatch.delenv("OODML_DATA")
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    assert resolve_root("mnist", None) == tmp_path / "home" / ".cache" / "oodml" / "data" / "mnist"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_class_tree(tmp_path / "imgs", {"b_cls": 3, "a_cls": 2, "c_cls": 4})


def test_folder_dataset_counts_names_sorted_ids(tree: Path) -> None:
    (tree / "notes.txt").write_text("not a class")
    (tree / "empty").mkdir()
    ds = load_dataset("folder", tree)
    assert ds.class_names == ["a_cls", "b_cls", "c_cls"] and ds.class_split is None
    assert len(ds) == 9 and ds.paths == sorted(ds.paths) and ds.paths[0] == "a_cls/img00.png"
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert ds.class_counts().tolist() == [2, 3, 4]
    img = ds.open(3)
    assert img.size == (12, 12) and img.mode == "RGB"


def test_subset_classes_relabels_and_rejects_unknown_patterns(tree: Path) -> None:
    ds = load_dataset("folder", tree).subset_classes(["c_*", "a_cls"])
    assert ds.class_names == ["a_cls", "c_cls"] and len(ds) == 6
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 1] and all(p.startswith(("a_", "c_")) for p in ds.paths)
    with pytest.raises(OodmlError, match="matches no class"):
        ds.subset_classes(["zz*"])


def test_content_hash_tracks_pixels_and_selection(tree: Path) -> None:
    h = load_dataset("folder", tree).content_hash()
    assert h == load_dataset("folder", tree).content_hash()
    assert load_dataset("folder", tree).subset_classes(["a_cls"]).content_hash() != h
    write_image(tree / "b_cls" / "img01.png", seed=999)  # same name, new pixels
    assert load_dataset("folder", tree).content_hash() != h


def test_corrupt_image_raises_error_naming_the_file(tree: Path) -> None:
    (tree / "b_cls" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = load_dataset("folder", tree)
    with pytest.raises(OodmlError, match=r"b_cls/img01\.png"):
        ds.open(ds.paths.index("b_cls/img01.png"))


def test_truncated_jpeg_is_reported(tmp_path: Path) -> None:
    path = write_image(tmp_path / "t" / "x" / "a.jpg", seed=1, size=64)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OodmlError, match="a.jpg"):
        load_dataset("folder", tmp_path / "t").open(0)


def test_missing_folder_and_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(OodmlError, match="does not exist"):
        load_dataset("folder", tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "loose.png", seed=0)
    with pytest.raises(OodmlError, match="no images in class sub-folders"):
        load_dataset("folder", tmp_path / "flat")
    with pytest.raises(OodmlError, match="no option 'rotate'"):
        load_dataset("omniglot_small", rotate=True)


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "omniglot", "mnist"])
def test_missing_dataset_says_where_and_how(name: str, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    with pytest.raises(OodmlError) as e:
        load_dataset(name, root)
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg and "not found" in msg and "--data-root" in msg
    assert not root.exists()  # offline: nothing created


def test_dataset_pickles_for_worker_processes(tree: Path) -> None:
    ds: ImageDataset = pickle.loads(pickle.dumps(load_dataset("folder", tree)))
    assert ds.open(0).size == (12, 12)
