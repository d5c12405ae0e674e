"""Stanford Cars / CARS196 (Krause et al. 2013), in either official form:

- `car_ims/` (or `car_ims.tgz`) + `cars_annos.mat`: image ids `car_ims/NNNNNN.jpg`;
- the devkit form: `cars_train/`, `cars_test/` (or their `.tgz`), `devkit/cars_meta.mat` (or `car_devkit.tgz`),
  `devkit/cars_train_annos.mat` and `cars_test_annos_withlabels.mat`: image ids `cars_train/NNNNN.jpg`, ...

Class names are the `cars_meta.mat` names with `/` replaced by `-`; conventional split: classes 1-98 train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oodml.data.base import DATASETS, DatasetInfo, DirSource, ImageDataset, ImageSource, MultiSource
from oodml.data.files import RemoteFile, fetch_official, file_digests, note_unofficial
from oodml.data.layout import extracted_from, missing_files_error
from oodml.errors import OodmlError

_IMS = "http://imagenet.stanford.edu/internal/car196/"
_KIT = "http://ai.stanford.edu/~jkrause/"
FILES = (  # the car_ims form is what a download fetches
    RemoteFile("car_ims.tgz", _IMS + "car_ims.tgz", md5="d5c8f0aa497503f355e17dc7886c3f14"),
    RemoteFile("cars_annos.mat", _IMS + "cars_annos.mat", md5="b407c6086d669747186bd1d764ff9dbc"),
)
DEVKIT_FILES = (
    RemoteFile("cars_train.tgz", _KIT + "car196/cars_train.tgz", md5="065e5b463ae28d29e77c1b4b166cfe61"),
    RemoteFile("cars_test.tgz", _KIT + "car196/cars_test.tgz", md5="4ce7ebf6a94d07f1952d94dd34c4d501"),
    RemoteFile("car_devkit.tgz", _KIT + "cars/car_devkit.tgz", md5="c3b158d763b6e2245038c8ad08e45376"),
    RemoteFile("cars_test_annos_withlabels.mat", _KIT + "car196/cars_test_annos_withlabels.mat",
               md5="b0a2b23655a3edd16d84508592a98d10"),
)
N_TRAIN_CLASSES = 98


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))  # type: ignore[no-any-return]
    except (OSError, ValueError, TypeError) as e:
        raise OodmlError(f"{path} is not a readable MATLAB file ({e}); use the official file") from None


def _scalar(x: Any) -> Any:
    return np.asarray(x).reshape(-1)[0]


def read_class_names(meta_mat: Path) -> list[str]:
    """The 196 class names of `cars_meta.mat` (or `cars_annos.mat`), in class-id order, `/` replaced by `-`."""
    names = _loadmat(meta_mat).get("class_names")
    if names is None:
        raise OodmlError(f"{meta_mat} has no class_names; use the official cars_meta.mat / cars_annos.mat")
    return [str(_scalar(n)).replace("/", "-") for n in np.asarray(names).reshape(-1)]


def read_annotations(annos_mat: Path, *fields: str) -> list[tuple[Any, ...]]:
    """Selected fields of every struct in the `annotations` array of an official `.mat` file."""
    annos = _loadmat(annos_mat).get("annotations")
    if annos is None or any(f not in (annos.dtype.names or ()) for f in fields):
        raise OodmlError(f"{annos_mat} lacks annotations with fields {fields}; use the official file")
    return [tuple(_scalar(a[f]) for f in fields) for a in annos.reshape(-1)]


def _images(root: Path, name: str) -> tuple[Path, str | None, Path | None] | None:
    """(folder holding `name/`, archive checksum, archive) from a folder or `name.tgz`."""
    if (root / name).is_dir():
        return root, None, None
    archive = root / f"{name}.tgz"
    if archive.is_file():
        found = extracted_from(archive, name)
        if found is not None:
            return found, file_digests(archive)["sha256"], archive
    return None


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _car_ims_form(root: Path) -> ImageDataset | None:
    annos = root / "cars_annos.mat"
    ims = _images(root, "car_ims") if annos.is_file() else None
    if ims is None:
        return None
    base, digest, archive = ims
    rows = read_annotations(annos, "relative_im_path", "class")
    paths = [str(p) for p, _ in rows]
    labels = [int(c) - 1 for _, c in rows]
    names = read_class_names(annos)
    _check(base, paths)
    note_unofficial("cars196", [annos] + ([archive] if archive else []), FILES)
    return _dataset(root, paths, labels, names, DirSource(base, fixed_digest=digest))


def _devkit_form(root: Path) -> ImageDataset | None:
    kit = root / "devkit"
    if not kit.is_dir() and (root / "car_devkit.tgz").is_file():
        kit = (extracted_from(root / "car_devkit.tgz", "devkit/cars_meta.mat") or root) / "devkit"
    meta, train_annos = kit / "cars_meta.mat", kit / "cars_train_annos.mat"
    test_annos = _first(root / "cars_test_annos_withlabels.mat", kit / "cars_test_annos_withlabels.mat")
    if not meta.is_file() or not train_annos.is_file():
        return None
    if test_annos is None:
        raise OodmlError(f"cars196: {root} has the devkit but not cars_test_annos_withlabels.mat (the test labels); "
                         f"download {DEVKIT_FILES[3].url} there")
    parts: dict[str, ImageSource] = {}
    paths: list[str] = []
    labels: list[int] = []
    archives: list[Path] = []
    for part, annos in (("cars_train", train_annos), ("cars_test", test_annos)):
        ims = _images(root, part)
        if ims is None:
            raise OodmlError(f"cars196: {root} has the devkit annotations but no {part}/ images or {part}.tgz; "
                             f"download {DEVKIT_FILES[0].url.replace('cars_train', part)} there")
        base, digest, archive = ims
        archives += [archive] if archive else []
        rows = read_annotations(annos, "fname", "class")
        ids = [f"{part}/{f}" for f, _ in rows]
        _check(base, ids)
        parts[part] = DirSource(base, fixed_digest=digest)
        paths += ids
        labels += [int(c) - 1 for _, c in rows]
    note_unofficial("cars196", archives + [test_annos], DEVKIT_FILES)
    return _dataset(root, paths, labels, read_class_names(meta), MultiSource(parts))


def _check(base: Path, ids: list[str]) -> None:
    missing = [i for i in ids if not (base / i).is_file()]
    if missing:
        raise missing_files_error("cars196", base, missing)


def _dataset(root: Path, paths: list[str], labels: list[int], names: list[str], source: ImageSource) -> ImageDataset:
    if len(names) != 196 and max(labels) >= len(names):
        raise OodmlError(f"cars196: class ids go up to {max(labels) + 1} but only {len(names)} class names; "
                         "use the official annotation files")
    return ImageDataset(name="cars196", root=root, paths=paths, labels=np.asarray(labels), class_names=names,
                        class_split=["train" if i < N_TRAIN_CLASSES else "test" for i in range(len(names))],
                        source=source)


@DATASETS.register(DatasetInfo("cars196", "Stanford Cars (CARS196), 196 car models, 16,185 images "
                               "(Krause et al. 2013)", FILES, "classes 1-98 train, 99-196 test"))
def cars196(root: Path) -> ImageDataset:
    """Load CARS196 from the car_ims form or the devkit form (whichever the root holds)."""
    for form in (_car_ims_form, _devkit_form):
        ds = form(root)
        if ds is not None:
            return ds
    fetch_official("cars196", FILES, root, "car_ims.tgz + cars_annos.mat, or cars_train/ + cars_test/ + devkit/")
    ds = _car_ims_form(root)
    if ds is None:
        raise OodmlError(f"cars196: the download into {root} did not give car_ims/ + cars_annos.mat; fetch it by hand")
    return ds
