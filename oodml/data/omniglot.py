"""Omniglot (Lake et al. 2015): the official `images_background.zip` / `images_evaluation.zip` (or folders), and the
embedded quick-start subset `omniglot_small` (the official `images_background_small1.zip`, shipped in the package)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from oodml.data.base import (DATASETS, DatasetInfo, DirSource, ImageDataset, ImageSource, MultiSource,
                             RotatedSource, ZipSource, list_images)
from oodml.data.files import RemoteFile, fetch_official, file_digests, note_unofficial
from oodml.errors import OodmlError

_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
FILES = (
    RemoteFile("images_background.zip", _URL + "images_background.zip", md5="68d2efa1b9178cc56df9314c21c6e718",
               size=9_464_212),
    RemoteFile("images_evaluation.zip", _URL + "images_evaluation.zip", md5="6b91aef0f799c5bb55b94e3f2daec811",
               size=6_462_886),
)
SMALL1 = RemoteFile("images_background_small1.zip", _URL + "images_background_small1.zip",
                    md5="e704a628b5459e08445c13499850abc4",
                    sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4", size=1_319_022)
ASSET = Path(__file__).parent / "assets" / SMALL1.name
SPLIT_OF_PART = {"images_background": "train", "images_evaluation": "test"}
ROTATIONS = (90, 180, 270)
_IMAGE = re.compile(r"^(images_[a-z_0-9]+)/([^/]+)/(character\d\d)/\d{4}_\d{2}\.png$")


def _part(root: Path, part: str) -> tuple[ImageSource, list[str], Path | None] | None:
    """(source, image ids, zip or None) for one official part, from its folder or its zip; None when absent."""
    if (root / part).is_dir():
        return DirSource(root), [f"{part}/{p}" for p in list_images(root / part)], None
    z = root / f"{part}.zip"
    if z.is_file():
        src = ZipSource((z,))
        return src, [m for m in src.members() if m.startswith(part + "/") and m.endswith(".png")], z
    return None


def _build(name: str, root: Path, parts: dict[str, tuple[ImageSource, list[str], Path | None]],
           split_of_part: dict[str, str] | None, rotations: bool) -> ImageDataset:
    """Class = `Alphabet/characterNN` (+ `@rot<deg>` for rotated copies when `rotations`)."""
    ids: list[str] = []
    class_of: dict[str, str] = {}
    part_of_class: dict[str, str] = {}
    for part, (_, part_ids, origin) in parts.items():
        bad = [i for i in part_ids if not _IMAGE.match(i)]
        if bad or not part_ids:
            where = origin or root / part
            raise OodmlError(f"{where} is not in the official Omniglot layout ({part}/<Alphabet>/characterNN/"
                             f"XXXX_YY.png; {'first odd entry ' + bad[0] if bad else 'no images'}); use the official "
                             "zip")
        for i in part_ids:
            m = _IMAGE.match(i)
            assert m is not None
            cls = f"{m.group(2)}/{m.group(3)}"
            class_of[i] = cls
            part_of_class[cls] = part
        ids += part_ids
    class_names = sorted(set(class_of.values()))
    if rotations:
        ids += [f"{i}@rot{d}" for i in list(ids) for d in ROTATIONS]
        for i in [i for i in ids if "@rot" in i]:
            base, _, deg = i.partition("@rot")
            class_of[i] = f"{class_of[base]}@rot{deg}"
        class_names = sorted(set(class_of.values()))
    index = {c: k for k, c in enumerate(class_names)}
    source: ImageSource = MultiSource({p: s for p, (s, _, _) in parts.items()})
    if rotations:
        source = RotatedSource(source)
    split = None
    if split_of_part is not None:
        split = [split_of_part[part_of_class[c.partition("@rot")[0]]] for c in class_names]
    return ImageDataset(name=name, root=root, paths=ids, labels=np.array([index[class_of[i]] for i in ids]),
                        class_names=class_names, class_split=split, source=source,
                        options={"rotations": rotations} if rotations else {})


def _find_parts(root: Path) -> dict[str, tuple[ImageSource, list[str], Path | None]]:
    parts = {p: _part(root, p) for p in SPLIT_OF_PART}
    missing = [p for p, v in parts.items() if v is None]
    if missing:
        raise FileNotFoundError(missing)
    return {p: v for p, v in parts.items() if v is not None}


@DATASETS.register(DatasetInfo("omniglot", "Omniglot handwritten characters, 1,623 classes x 20 drawers "
                               "(Lake et al. 2015); option rotations=True adds 90/180/270 deg classes", FILES,
                               "background alphabets train, evaluation alphabets test"))
def omniglot(root: Path, rotations: bool = False) -> ImageDataset:
    """Load Omniglot from the two official zips or their extracted folders."""
    try:
        parts = _find_parts(root)
    except FileNotFoundError:
        fetch_official("omniglot", FILES, root, "images_background.zip and images_evaluation.zip (or folders)")
        parts = _find_parts(root)
    ds = _build("omniglot", root, parts, SPLIT_OF_PART, rotations)
    note_unofficial("omniglot", [z for _, _, z in parts.values() if z is not None], FILES)
    return ds


@DATASETS.register(DatasetInfo("omniglot_small", "Omniglot 'small1' background subset shipped with oodml: 5 "
                               "alphabets, 136 classes, 2,720 images (offline quick start)", (SMALL1,)))
def omniglot_small(root: Path, rotations: bool = False) -> ImageDataset:
    """Load the embedded subset (the data root is ignored); its md5 is checked against the official file."""
    if not ASSET.is_file() or file_digests(ASSET)["md5"] != SMALL1.md5:
        raise OodmlError(f"the packaged {ASSET} is missing or corrupt; reinstall oodml (pip install -e .)")
    part = "images_background_small1"
    src = ZipSource((ASSET,))
    ids = [m for m in src.members() if m.startswith(part + "/") and m.endswith(".png")]
    return _build("omniglot_small", ASSET.parent, {part: (src, ids, ASSET)}, None, rotations)
