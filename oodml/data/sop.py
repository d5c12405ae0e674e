"""Stanford Online Products (Song et al. 2016): `Stanford_Online_Products.zip` (read in place) or its folder.

Class = product (`class_id` of the official lists, named by its number); the super-class (`bicycle`, ...) is kept
in `ImageDataset.class_groups`; the conventional split is `Ebay_train.txt` vs `Ebay_test.txt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oodml.data.base import DATASETS, DatasetInfo, DirSource, ImageDataset, ImageSource, ZipSource
from oodml.data.files import RemoteFile, fetch_official, note_unofficial
from oodml.data.layout import missing_files_error
from oodml.errors import OodmlError

FILES = (RemoteFile("Stanford_Online_Products.zip", "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                    md5="7f73d41a2f44250d4779881525aea32e"),)
TOP = "Stanford_Online_Products"
HEADER = ["image_id", "class_id", "super_class_id", "path"]


@dataclass(frozen=True)
class SopRow:
    """One line of the official lists."""

    image_id: int
    class_id: int
    super_class_id: int
    path: str
    split: str


def parse_sop_list(text: str, split: str, origin: str) -> list[SopRow]:
    """Parse `Ebay_train.txt` / `Ebay_test.txt` / `Ebay_info.txt` text (header `image_id class_id super_class_id
    path`); `split` is recorded per row ("" for Ebay_info.txt)."""
    lines = text.splitlines()
    if not lines or lines[0].split() != HEADER:
        raise OodmlError(f"{origin} does not start with the header '{' '.join(HEADER)}'; use the official list")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            raise OodmlError(f"{origin}:{n} is not 'image_id class_id super_class_id path'; use the official list")
        rows.append(SopRow(int(parts[0]), int(parts[1]), int(parts[2]), parts[3], split))
    return rows


def _read(source: Path | ZipSource, name: str) -> str | None:
    if isinstance(source, ZipSource):
        try:
            return source.read(f"{TOP}/{name}").decode()
        except KeyError:
            return None
    p = source / name
    return p.read_text() if p.is_file() else None


def _find(root: Path) -> tuple[Path | ZipSource, Path | None]:
    for base in (root / TOP, root):
        if (base / "Ebay_train.txt").is_file() or (base / "Ebay_info.txt").is_file():
            return base, None
    zips = [root / FILES[0].name] if (root / FILES[0].name).is_file() else []
    zips += sorted(p for p in root.glob("*.zip") if p.name != FILES[0].name) if root.is_dir() else []
    for z in zips:
        src = ZipSource((z,), prefix=f"{TOP}/")
        if src.has(f"{TOP}/Ebay_train.txt") or src.has(f"{TOP}/Ebay_info.txt"):
            return src, z
    raise FileNotFoundError


@DATASETS.register(DatasetInfo("sop", "Stanford Online Products, 22,634 products in 12 super-classes, 120,053 "
                               "images (Song et al. 2016)", FILES, "Ebay_train.txt train, Ebay_test.txt test"))
def sop(root: Path) -> ImageDataset:
    """Load SOP; class names are the official class ids ('1'..'22634'), image ids the lists' `path` column."""
    try:
        where, archive = _find(root)
    except FileNotFoundError:
        fetch_official("sop", FILES, root, f"{FILES[0].name} or a {TOP}/ folder with Ebay_train.txt")
        where, archive = _find(root)
    train, test = _read(where, "Ebay_train.txt"), _read(where, "Ebay_test.txt")
    if train is not None and test is not None:
        rows = parse_sop_list(train, "train", "Ebay_train.txt") + parse_sop_list(test, "test", "Ebay_test.txt")
    else:
        info = _read(where, "Ebay_info.txt")
        if info is None:
            raise OodmlError(f"{where}: Ebay_test.txt is missing (and no Ebay_info.txt); extract the official zip")
        rows = parse_sop_list(info, "", "Ebay_info.txt")
    source: ImageSource
    if isinstance(where, ZipSource):
        source = where
        missing = [r.path for r in rows if not where.has(f"{TOP}/{r.path}")]
        base = archive or root
    else:
        source = DirSource(where)
        missing = [r.path for r in rows if not (where / r.path).is_file()]
        base = where
    if missing:
        raise missing_files_error("sop", base, missing)
    class_ids = sorted({r.class_id for r in rows})
    index = {c: i for i, c in enumerate(class_ids)}
    group = {r.class_id: r.path.split("/", 1)[0].removesuffix("_final") for r in rows}
    split = {r.class_id: r.split for r in rows}
    n_train = max((r.class_id for r in rows if r.split == "train"), default=11318)
    if archive is not None:
        note_unofficial("sop", [archive], FILES)
    return ImageDataset(
        name="sop", root=root, paths=[r.path for r in rows],
        labels=np.array([index[r.class_id] for r in rows]), class_names=[str(c) for c in class_ids],
        source=source, class_groups=[group[c] for c in class_ids],
        class_split=[split[c] or ("train" if c <= n_train else "test") for c in class_ids],
    )
