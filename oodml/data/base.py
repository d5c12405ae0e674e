"""Dataset registry, image sources (folder, zip, in-memory arrays) and the `ImageDataset` every loader returns."""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import io
import json
import os
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodml.data.files import RemoteFile, file_digests, files_digest
from oodml.errors import OodmlError, suggest
from oodml.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class DatasetInfo:
    """Registry metadata of a dataset: a one-line description and its official files (for download/verification)."""

    name: str
    description: str
    files: tuple[RemoteFile, ...] = ()
    conventional_split: str = ""


DATASETS: Registry[DatasetInfo] = Registry("dataset")  # type: ignore[type-var]  # frozen fields vs HasName


class ImageSource(ABC):
    """Where the pixels of a dataset live; image ids are relative paths as the loader enumerates them."""

    @abstractmethod
    def open(self, image_id: str) -> Image.Image:
        """Decode one image (may raise OSError/ValueError for unreadable files)."""

    @abstractmethod
    def digest(self, image_ids: Sequence[str]) -> str:
        """A content checksum of the given images (or of the whole archive they come from)."""

    def location(self, image_id: str) -> str:
        """Human-readable location of an image, for error messages."""
        return image_id


@dataclass
class DirSource(ImageSource):
    """Images as files under `base` (id = path relative to `base`). `fixed_digest` short-cuts hashing (tar cache)."""

    base: Path
    fixed_digest: str | None = None

    def open(self, image_id: str) -> Image.Image:
        """Open `base / image_id` with PIL."""
        return Image.open(self.base / image_id)

    def digest(self, image_ids: Sequence[str]) -> str:
        """sha256 of the files' bytes (memoised), or the archive checksum they were extracted from."""
        return self.fixed_digest or files_digest(self.base, list(image_ids))

    def location(self, image_id: str) -> str:
        """The file path."""
        return str(self.base / image_id)


@dataclass
class ZipSource(ImageSource):
    """Images read straight from zip archives: member name = `prefix + image_id`, looked up over all `zips`."""

    zips: tuple[Path, ...]
    prefix: str = ""
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _handles: dict[int, zipfile.ZipFile] = field(default_factory=dict, repr=False)
    _pid: int = field(default=-1, repr=False)

    def __post_init__(self) -> None:
        if not self._index:
            for i, z in enumerate(self.zips):
                with zipfile.ZipFile(z) as zf:
                    for name in zf.namelist():
                        self._index.setdefault(name, i)

    def members(self) -> list[str]:
        """All member names of all zips."""
        return list(self._index)

    def has(self, member: str) -> bool:
        """Whether any of the zips holds `member`."""
        return member in self._index

    def _zip(self, i: int) -> zipfile.ZipFile:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = zipfile.ZipFile(self.zips[i])
        return self._handles[i]

    def read(self, member: str) -> bytes:
        """Raw bytes of a member (KeyError when absent)."""
        return self._zip(self._index[member]).read(member)

    def open(self, image_id: str) -> Image.Image:
        """Decode a member image into memory."""
        return Image.open(io.BytesIO(self.read(self.prefix + image_id)))

    def digest(self, image_ids: Sequence[str]) -> str:
        """sha256 of the zip archives."""
        return hashlib.sha256("".join(file_digests(z)["sha256"] for z in self.zips).encode()).hexdigest()

    def location(self, image_id: str) -> str:
        """`archive.zip:member`."""
        i = self._index.get(self.prefix + image_id)
        return f"{self.zips[i] if i is not None else self.zips[0]}:{self.prefix + image_id}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1
        return state


@dataclass
class ArraySource(ImageSource):
    """Grayscale images held as uint8 arrays: id `<part>/<index:05d>` -> `arrays[part][index]`."""

    arrays: dict[str, np.ndarray]
    checksum: str

    def open(self, image_id: str) -> Image.Image:
        """The image as a PIL `L` image."""
        part, _, index = image_id.partition("/")
        return Image.fromarray(self.arrays[part][int(index)], mode="L")

    def digest(self, image_ids: Sequence[str]) -> str:
        """Checksum of the source files."""
        return self.checksum


@dataclass
class MultiSource(ImageSource):
    """Routes an image id to a sub-source by its first path component (e.g. `cars_train/`, `images_evaluation/`)."""

    parts: dict[str, ImageSource]

    def _route(self, image_id: str) -> ImageSource:
        return self.parts[image_id.split("/", 1)[0]]

    def open(self, image_id: str) -> Image.Image:
        """Open through the sub-source."""
        return self._route(image_id).open(image_id)

    def digest(self, image_ids: Sequence[str]) -> str:
        """Combined checksum of the sub-sources, in part order."""
        h = hashlib.sha256()
        for key in sorted(self.parts):
            ids = [i for i in image_ids if i.split("/", 1)[0] == key]
            if ids:
                h.update(f"{key}:{self.parts[key].digest(ids)}".encode())
        return h.hexdigest()

    def location(self, image_id: str) -> str:
        """The sub-source's location."""
        return self._route(image_id).location(image_id)


_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass
class RotatedSource(ImageSource):
    """Adds rotated copies: id `<base id>@rot<deg>` is the base image rotated counter-clockwise by deg degrees."""

    base: ImageSource

    def open(self, image_id: str) -> Image.Image:
        """Open and rotate."""
        base_id, _, deg = image_id.partition("@rot")
        img = self.base.open(base_id)
        if deg:
            img.load()
            img = img.transpose(_ROTATIONS[int(deg)])
        return img

    def digest(self, image_ids: Sequence[str]) -> str:
        """The base images' checksum."""
        return self.base.digest(sorted({i.partition("@rot")[0] for i in image_ids}))

    def location(self, image_id: str) -> str:
        """The base image's location."""
        return self.base.location(image_id.partition("@rot")[0])


#: what decoding an image may raise for a bad file; PIL's DecompressionBombError (an image of more than twice
#: `Image.MAX_IMAGE_PIXELS` pixels, e.g. a few KB of PNG that claims 10^10 pixels) is one of them
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, zipfile.BadZipFile, KeyError,
                Image.DecompressionBombError)


@dataclass
class ImageDataset:
    """A labelled image dataset: image ids sorted, `labels` index `class_names` (named as docs/formats.md describes)."""

    name: str
    root: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    class_split: list[str] | None
    source: ImageSource
    class_groups: list[str] | None = None  # e.g. the SOP super-class of each class
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = sorted(range(len(self.paths)), key=self.paths.__getitem__)
        self.paths = [self.paths[i] for i in order]
        self.labels = np.asarray(self.labels, dtype=np.int64)[order]
        if len(self.paths) != len(self.labels):
            raise ValueError("paths and labels differ in length")
        if self.class_split is not None and len(self.class_split) != len(self.class_names):
            raise ValueError("class_split must have one entry per class")

    def __len__(self) -> int:
        return len(self.paths)

    def open(self, i: int) -> Image.Image:
        """Decode image `i` fully (grayscale 1-bit images become `L`); OodmlError naming the file when unreadable."""
        image_id = self.paths[i]
        try:
            img = self.source.open(image_id)
            img.load()
        except _READ_ERRORS as e:
            raise OodmlError(f"cannot read image {self.source.location(image_id)} of dataset {self.name} "
                             f"({type(e).__name__}: {e}); replace or remove that file") from None
        return img.convert("L") if img.mode == "1" else img

    def class_counts(self) -> np.ndarray:
        """Images per class."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def subset_classes(self, patterns: Sequence[str]) -> ImageDataset:
        """Keep the classes whose name matches any fnmatch pattern (relabelled in the original class order)."""
        pats = [p for p in patterns if p]
        if not pats:
            return self
        keep: list[int] = []
        for pat in pats:
            hits = [i for i, c in enumerate(self.class_names) if fnmatch.fnmatchcase(c, pat)]
            if not hits:
                raise OodmlError(f"--classes {pat!r} matches no class of {self.name}"
                                 f"{suggest(pat, self.class_names)}; class names look like {self.class_names[0]!r}")
            keep += hits
        kept = sorted(set(keep))
        new_label = np.full(len(self.class_names), -1, dtype=np.int64)
        new_label[kept] = np.arange(len(kept))
        rows = np.flatnonzero(new_label[self.labels] >= 0)

        def pick(xs: list[str] | None) -> list[str] | None:
            return None if xs is None else [xs[i] for i in kept]

        return replace(self, paths=[self.paths[r] for r in rows], labels=new_label[self.labels[rows]],
                       class_names=[self.class_names[i] for i in kept], class_split=pick(self.class_split),
                       class_groups=pick(self.class_groups), options={**self.options, "classes": list(pats)})

    def content_hash(self) -> str:
        """sha256 over the dataset name, image ids, labels, class names/split and the images' source checksum."""
        h = hashlib.sha256()
        h.update(json.dumps({"name": self.name, "class_names": self.class_names, "class_split": self.class_split},
                            sort_keys=True).encode())
        h.update("\0".join(self.paths).encode())
        h.update(self.labels.tobytes())
        h.update(self.source.digest(self.paths).encode())
        return h.hexdigest()


def resolve_root(name: str, data_root: str | Path | None) -> Path:
    """`--data-root`, else `$OODML_DATA/<name>`, else `~/.cache/oodml/data/<name>`."""
    if data_root is not None and str(data_root) != "":
        root = Path(data_root).expanduser()
        if root.exists() and not root.is_dir():
            raise OodmlError(f"--data-root {str(root)!r} is a file; pass the folder that holds the dataset's "
                             "archives or extracted files")
        return root
    env = os.environ.get("OODML_DATA")
    if env:
        return Path(env).expanduser() / name
    return Path.home() / ".cache" / "oodml" / "data" / name


#: the loader of datasets named after their folder (`oodml/data/folder.py`)
FOLDER_LOADER = "folder"


def load_dataset(name: str, root: str | Path | None = None, /, **options: Any) -> ImageDataset:
    """Load a registered dataset from its root (see `resolve_root`); loader options as keyword arguments.

    A name that is not registered is a folder dataset of that name when its root (`root`, else
    `$OODML_DATA/<name>` or `~/.cache/oodml/data/<name>`) is a folder; otherwise OodmlError with the closest names.
    """
    canonical = _loader_of(name, root, options)
    entry = DATASETS.get(canonical)
    path = resolve_root(canonical if name in DATASETS.names(include_aliases=True) else name, root)
    check_loader_options(canonical, options)
    return entry.factory(path, **options)  # type: ignore[no-any-return]


def _loader_of(name: str, root: str | Path | None, options: dict[str, Any]) -> str:
    """The registered loader for dataset `name`; an unregistered name whose root is a folder is loaded by `folder`
    with `name` as its name (written into `options`)."""
    if name in DATASETS.names(include_aliases=True):
        canonical = DATASETS.resolve(name)
        if "name" in options and canonical != FOLDER_LOADER:
            raise OodmlError(f"--name is for folder datasets; {canonical} is a registered dataset with its own name")
        return canonical
    if resolve_root(name, root).is_dir() and options.get("name", name) == name:
        from oodml.progress import log

        log(f"dataset {name!r} is not a registered name: reading {resolve_root(name, root)} as a folder of class "
            f"sub-folders named {name!r}")
        options["name"] = name
        return FOLDER_LOADER
    try:
        DATASETS.resolve(name)
    except OodmlError as e:
        where = resolve_root(name, root)
        raise OodmlError(f"{e}; or, for a folder of class sub-folders named {name!r}, pass --data-root DIR "
                         f"({str(where)!r} is not a folder)") from None
    raise AssertionError("unreachable")  # pragma: no cover


def check_loader_options(canonical: str, options: Mapping[str, Any]) -> None:
    """OodmlError unless every option is one the loader of registered dataset `canonical` declares, of the type of
    its default (`rotations=false`, not `"no"`); run before any work, also where no image is read."""
    params = {n: p for n, p in inspect.signature(DATASETS.get(canonical).factory).parameters.items() if n != "root"}
    accepted = list(params)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OodmlError(f"dataset {canonical} has no option {unknown[0]!r}; options: {', '.join(accepted) or 'none'}")
    for n, value in options.items():  # an option's type is its loader's default's (rotations=false, not "no")
        default = params[n].default
        if default is not inspect.Parameter.empty and default is not None and type(value) is not type(default):
            raise OodmlError(f"dataset {canonical} option {n}={value!r} must be a {type(default).__name__} like its "
                             f"default ({n}={default!r})")


def list_images(base: Path) -> list[str]:
    """Image files under `base` (recursive), as sorted `/`-separated relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        rel = Path(dirpath).relative_to(base).as_posix()
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                out.append(f if rel == "." else f"{rel}/{f}")
    return sorted(out)
