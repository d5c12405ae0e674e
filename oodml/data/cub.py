"""CUB-200-2011 (Wah et al. 2011): `CUB_200_2011.tgz` or its extracted `CUB_200_2011/` folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oodml.data.base import DATASETS, DatasetInfo, DirSource, ImageDataset
from oodml.data.files import RemoteFile, fetch_official, file_digests, note_unofficial
from oodml.data.layout import archives_in, extracted_from, missing_files_error, read_table

FILES = (RemoteFile("CUB_200_2011.tgz", "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                    md5="97eceeb196236b17998738112f37df78", size=1_150_585_339),)
TOP = "CUB_200_2011"
N_TRAIN_CLASSES = 100  # conventional split: classes 1-100 train, 101-200 test


def _find(root: Path) -> tuple[Path, str | None, Path | None]:
    """(folder holding images.txt, archive checksum or None, archive or None)."""
    for base in (root / TOP, root):
        if (base / "images.txt").is_file():
            return base, None, None
    for archive in archives_in(root, FILES[0].name, (".tgz", ".tar.gz", ".tar")):
        found = extracted_from(archive, f"{TOP}/images.txt")
        if found is not None:
            return found / TOP, file_digests(archive)["sha256"], archive
    raise FileNotFoundError


def _locate(root: Path) -> tuple[Path, str | None, Path | None]:
    try:
        return _find(root)
    except FileNotFoundError:
        fetch_official("cub200", FILES, root, f"{FILES[0].name} or an extracted {TOP}/ folder with images.txt")
        return _find(root)


@DATASETS.register(DatasetInfo("cub200", "CUB-200-2011 birds, 200 classes, 11,788 images (Wah et al. 2011)", FILES,
                               "classes 1-100 train, 101-200 test"))
def cub200(root: Path) -> ImageDataset:
    """Load CUB-200-2011; class names `NNN.Name` from classes.txt, image ids as in images.txt."""
    base, digest, archive = _locate(root)
    classes = read_table(base / "classes.txt", 2)
    images: dict[str, str] = {r[0]: r[1] for r in read_table(base / "images.txt", 2)}
    labels_of: dict[str, str] = {r[0]: r[1] for r in read_table(base / "image_class_labels.txt", 2)}
    class_ids = sorted(classes, key=lambda r: int(r[0]))
    index = {cid: i for i, (cid, _) in enumerate(class_ids)}
    paths = [images[i] for i in images]
    labels = [index[labels_of[i]] for i in images]
    missing = [p for p in paths if not (base / "images" / p).is_file()]
    if missing:
        raise missing_files_error("cub200", base / "images", missing)
    if archive is not None:
        note_unofficial("cub200", [archive], FILES)
    return ImageDataset(
        name="cub200", root=root, paths=paths, labels=np.asarray(labels),
        class_names=[name for _, name in class_ids],
        class_split=["train" if int(cid) <= N_TRAIN_CLASSES else "test" for cid, _ in class_ids],
        source=DirSource(base / "images", fixed_digest=digest),
    )
