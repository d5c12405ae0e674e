"""CARS196 and SOP: the real annotation files/lists from ../shared/data, with fake image trees in the official layout
(hard links to one tiny JPEG), since the shared copies hold no images."""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from oodml.data import load_dataset
from oodml.data.cars import read_annotations, read_class_names
from oodml.data.sop import parse_sop_list
from oodml.errors import OodmlError
from tests.data.helpers import write_image

pytestmark = pytest.mark.data


def _link_all(target: Path, paths: list[Path]) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        os.link(target, p)


@pytest.fixture
def cars_devkit_root(shared_data: Path, tmp_path: Path) -> Path:
    src = shared_data / "cars196_annotations"
    root = tmp_path / "cars"
    (root / "devkit").mkdir(parents=True)
    for name in ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"):
        (root / "devkit" / name).symlink_to(src / "devkit" / name)
    (root / "cars_test_annos_withlabels.mat").symlink_to(src / "cars_test_annos_withlabels.mat")
    jpg = write_image(tmp_path / "one.jpg", seed=3)
    _link_all(jpg, [root / "cars_train" / f"{i:05d}.jpg" for i in range(1, 8145)])
    _link_all(jpg, [root / "cars_test" / f"{i:05d}.jpg" for i in range(1, 8042)])
    return root


def test_cars_class_names_from_meta(shared_data: Path) -> None:
    names = read_class_names(shared_data / "cars196_annotations" / "devkit" / "cars_meta.mat")
    assert len(names) == len(set(names)) == 196
    assert names[0] == "AM General Hummer SUV 2000" and names[-1] == "smart fortwo Convertible 2012"
    assert names[173] == "Ram C-V Cargo Van Minivan 2012" and not any("/" in n for n in names)


def test_cars_devkit_form(cars_devkit_root: Path) -> None:
    ds = load_dataset("cars196", cars_devkit_root)
    assert len(ds) == 16185 and len(ds.class_names) == 196
    counts = ds.class_counts()
    assert counts.min() == 48 and counts.max() == 136
    assert ds.class_split == ["train"] * 98 + ["test"] * 98
    i = ds.paths.index("cars_train/00001.jpg")
    assert ds.class_names[ds.labels[i]] == read_class_names(cars_devkit_root / "devkit" / "cars_meta.mat")[13]
    assert sum(p.startswith("cars_test/") for p in ds.paths) == 8041
    assert ds.open(i).mode == "RGB"


def test_cars_devkit_without_test_labels_or_images(cars_devkit_root: Path) -> None:
    (cars_devkit_root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(OodmlError, match="cars_test_annos_withlabels.mat"):
        load_dataset("cars196", cars_devkit_root)


def test_cars_missing_image_is_named(cars_devkit_root: Path) -> None:
    (cars_devkit_root / "cars_test" / "00042.jpg").unlink()
    with pytest.raises(OodmlError, match="1 listed images are missing .*00042.jpg"):
        load_dataset("cars196", cars_devkit_root)


def test_cars_car_ims_form(shared_data: Path, tmp_path: Path) -> None:
    import scipy.io

    rows = read_annotations(shared_data / "cars196_annotations" / "devkit" / "cars_train_annos.mat", "fname", "class")
    rows = rows[:30]
    annos = np.array([(f"car_ims/{k:06d}.jpg", np.uint8(c), np.uint8(0)) for k, (_, c) in enumerate(rows, 1)],
                     dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    names = scipy.io.loadmat(str(shared_data / "cars196_annotations" / "devkit" / "cars_meta.mat"))["class_names"]
    root = tmp_path / "cars"
    root.mkdir()
    scipy.io.savemat(str(root / "cars_annos.mat"), {"annotations": annos[None, :], "class_names": names})
    _link_all(write_image(tmp_path / "one.jpg", seed=1), [root / f"car_ims/{k:06d}.jpg" for k in range(1, 31)])
    ds = load_dataset("cars196", root)
    assert len(ds) == 30 and ds.paths[0] == "car_ims/000001.jpg" and len(ds.class_names) == 196
    assert ds.labels.tolist() == [int(c) - 1 for _, c in rows]


def test_sop_official_lists(shared_data: Path) -> None:
    src = shared_data / "stanford_online_products"
    train = parse_sop_list((src / "Ebay_train.txt").read_text(), "train", "Ebay_train.txt")
    test = parse_sop_list((src / "Ebay_test.txt").read_text(), "test", "Ebay_test.txt")
    assert len(train) == 59551 and len(test) == 60502
    assert len({r.class_id for r in train}) == 11318 and len({r.class_id for r in test}) == 11316
    assert not {r.class_id for r in train} & {r.class_id for r in test}
    assert Counter(r.super_class_id for r in train)[8] == 6731 and Counter(r.super_class_id for r in test)[1] == 4145
    groups = {r.super_class_id: r.path.split("/")[0] for r in train + test}
    assert groups[1] == "bicycle_final" and groups[12] == "toaster_final" and len(groups) == 12


def _sop_subset(shared_data: Path, dest: Path, per_group: int = 2) -> list[str]:
    """Lists cut to the first `per_group` products of each super-class (train and test), images as links."""
    src = shared_data / "stanford_online_products"
    jpg = write_image(dest.parent / "one.jpg", seed=5)
    paths = []
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        lines = (src / name).read_text().splitlines()
        kept, seen = [lines[0]], Counter[int]()
        chosen: set[int] = set()
        for line in lines[1:]:
            _, cid, sup, path = line.split()
            if int(cid) not in chosen and seen[int(sup)] < per_group:
                chosen.add(int(cid))
                seen[int(sup)] += 1
            if int(cid) in chosen:
                kept.append(line)
                paths.append(path)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text("\n".join(kept) + "\n")
    _link_all(jpg, [dest / p for p in paths])
    return paths


def test_sop_folder_form(shared_data: Path, tmp_path: Path) -> None:
    paths = _sop_subset(shared_data, tmp_path / "root" / "Stanford_Online_Products")
    ds = load_dataset("sop", tmp_path / "root")
    assert len(ds) == len(paths) and len(ds.class_names) == 48
    assert Counter(ds.class_split) == {"train": 24, "test": 24}
    assert ds.class_groups is not None and Counter(ds.class_groups)["bicycle"] == 4
    assert ds.class_names[0] == "1" and ds.paths == sorted(paths)
    i = ds.paths.index(paths[0])
    assert ds.class_groups[ds.labels[i]] == paths[0].split("_final")[0]


def test_sop_zip_form_read_in_place(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree" / "Stanford_Online_Products"
    paths = _sop_subset(shared_data, tree, per_group=1)
    root = tmp_path / "root"
    root.mkdir()
    with zipfile.ZipFile(root / "Stanford_Online_Products.zip", "w") as z:
        for f in sorted(tree.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(tree.parent).as_posix())
    ds = load_dataset("sop", root)
    assert "Stanford_Online_Products.zip: checksum differs" in capsys.readouterr().err
    assert len(ds) == len(paths) and len(ds.class_names) == 24 and ds.open(0).size == (12, 12)
