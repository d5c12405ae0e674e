"""MNIST (LeCun et al. 1998): the four original IDX `.gz` files; a root with only the t10k pair is valid."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from oodml.data.base import DATASETS, ArraySource, DatasetInfo, ImageDataset
from oodml.data.files import RemoteFile, fetch_official, file_digests, note_unofficial
from oodml.errors import OodmlError
from oodml.progress import log

_URL = "http://yann.lecun.com/exdb/mnist/"
FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", _URL + "train-images-idx3-ubyte.gz",
               md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
               sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", size=9_912_422),
    RemoteFile("train-labels-idx1-ubyte.gz", _URL + "train-labels-idx1-ubyte.gz",
               md5="d53e105ee54ea40749a09fcbcd1e9432",
               sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", size=28_881),
    RemoteFile("t10k-images-idx3-ubyte.gz", _URL + "t10k-images-idx3-ubyte.gz",
               md5="9fb629c4189551a2d022fa330f9573f3",
               sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", size=1_648_877),
    RemoteFile("t10k-labels-idx1-ubyte.gz", _URL + "t10k-labels-idx1-ubyte.gz",
               md5="ec29112dd5afa0611ce80d1b7f02629c",
               sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", size=4_542),
)
PARTS = ("t10k", "train")
TRAIN_DIGITS = 5  # conventional split (Scott et al. 2018): digits 0-4 source/train, 5-9 target/test


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzip or plain): uint8 array of shape (n,) for labels or (n, rows, cols) for images."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise OodmlError(f"{path} is not a readable IDX file ({e}); download it again") from None
    header = np.frombuffer(data[:4], dtype=">i4")
    if len(data) < 8 or int(header[0]) != magic:
        raise OodmlError(f"{path} is not an IDX file with magic {magic}; download it again")
    ndim = magic & 0xFF
    dims = tuple(int(d) for d in np.frombuffer(data[4:4 + 4 * ndim], dtype=">i4"))
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise OodmlError(f"{path} is truncated: header says {dims}, body has {len(body)} bytes; download it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _pair(root: Path, part: str) -> tuple[Path, Path] | None:
    for suffix in (".gz", ""):
        img, lab = root / f"{part}-images-idx3-ubyte{suffix}", root / f"{part}-labels-idx1-ubyte{suffix}"
        if img.is_file() and lab.is_file():
            return img, lab
    return None


@DATASETS.register(DatasetInfo("mnist", "MNIST handwritten digits, 10 classes, 70,000 images (LeCun et al. 1998)",
                               FILES, "digits 0-4 train, 5-9 test"))
def mnist(root: Path) -> ImageDataset:
    """Load MNIST from its IDX files; image ids `train/NNNNN` and `t10k/NNNNN` (index in the file)."""
    pairs = {p: _pair(root, p) for p in PARTS}
    if not any(pairs.values()):
        fetch_official("mnist", FILES, root, "the IDX files train-/t10k-{images-idx3,labels-idx1}-ubyte.gz")
        pairs = {p: _pair(root, p) for p in PARTS}
    arrays, paths, labels, files = {}, [], [], []
    for part, pair in pairs.items():
        if pair is None:
            continue
        images, lab = read_idx(pair[0], 2051), read_idx(pair[1], 2049)
        if len(images) != len(lab):
            raise OodmlError(f"{pair[0]} has {len(images)} images but {pair[1]} {len(lab)} labels; use matching files")
        arrays[part] = images
        paths += [f"{part}/{i:05d}" for i in range(len(lab))]
        labels += lab.astype(np.int64).tolist()
        files += list(pair)
    absent = [p for p, v in pairs.items() if v is None]
    if absent:
        log(f"warning: mnist: no {absent[0]} files in {root}; using the {len(paths):,} images of the "
            f"{' and '.join(arrays)} pair only")
    note_unofficial("mnist", files, FILES)
    checksum = hashlib.sha256("".join(file_digests(f)["sha256"] for f in files).encode()).hexdigest()
    return ImageDataset(name="mnist", root=root, paths=paths, labels=np.asarray(labels),
                        class_names=[str(d) for d in range(10)],
                        class_split=["train" if d < TRAIN_DIGITS else "test" for d in range(10)],
                        source=ArraySource(arrays, checksum))
