"""The features file (docs/formats.md): one `.npz` with features, labels, class names, image ids and a JSON `meta`."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oodml.errors import OodmlError, check_name
from oodml.io import atomic_write

REQUIRED_KEYS = ("features", "labels", "class_names", "paths", "meta")


def feature_hash(features: np.ndarray, labels: np.ndarray, class_names: np.ndarray, paths: np.ndarray) -> str:
    """sha256 over features (float32, C order), labels (int64), class names and paths (UTF-8, NUL-separated)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update("\0".join(str(c) for c in class_names).encode())
    h.update(b"\1")
    h.update("\0".join(str(p) for p in paths).encode())
    return h.hexdigest()


@dataclass
class FeatureSet:
    """Per-image backbone features of a dataset. Rows sorted by `paths`; `labels` index `class_names`."""

    features: np.ndarray
    labels: np.ndarray
    class_names: np.ndarray
    paths: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    class_split: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.class_names = np.asarray(self.class_names, dtype=str)
        self.paths = np.asarray(self.paths, dtype=str)
        n = len(self.features)
        if self.features.ndim != 2 or len(self.labels) != n or len(self.paths) != n or self.labels.ndim != 1:
            raise OodmlError("features file is inconsistent: features (N, D), labels (N,) and paths (N,) must agree")
        if self.features.shape[1] < 1:
            raise OodmlError("features file has zero-width features (N, 0); re-embed the dataset with `oodml embed`")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise OodmlError("features file is inconsistent: labels must index class_names")
        if self.class_split is not None:
            self.class_split = np.asarray(self.class_split, dtype=str)
            if self.class_split.shape != self.class_names.shape:
                raise OodmlError(f"features file is inconsistent: class_split has shape {self.class_split.shape}, "
                                 f"class_names {self.class_names.shape}; they must agree (one entry per class)")
        self._check_finite()

    def _check_finite(self) -> None:
        """NaN or Inf in a feature row is an error naming its classes: a broken embedding (the backbone diverged or
        the file was damaged) must not silently drop classes from the benchmark."""
        bad = ~np.isfinite(self.features).all(axis=1)
        if bad.any():
            classes = sorted({str(self.class_names[label]) for label in np.unique(self.labels[bad])})
            more = f" and {len(classes) - 5} more" if len(classes) > 5 else ""
            raise OodmlError(f"features file has NaN or Inf in {int(bad.sum())} row(s) of class(es) "
                             f"{', '.join(map(repr, classes[:5]))}{more}; re-embed (`oodml embed`), or leave those "
                             "classes out (`oodml embed --classes ...`)")

    @property
    def dataset(self) -> str:
        """Dataset name from `meta`."""
        return str(self.meta.get("dataset", ""))

    @property
    def backbone(self) -> str:
        """Backbone name from `meta`."""
        return str(self.meta.get("backbone", ""))

    @property
    def hash(self) -> str:
        """The content hash (recomputed; `meta['feature_hash']` should equal it)."""
        return feature_hash(self.features, self.labels, self.class_names, self.paths)

    def sorted(self) -> FeatureSet:
        """A copy with rows sorted by `paths` (the file's canonical order)."""
        order = np.argsort(self.paths, kind="stable")
        return FeatureSet(self.features[order], self.labels[order], self.class_names, self.paths[order],
                          dict(self.meta), self.class_split)

    def class_means(self) -> np.ndarray:
        """(C, D) float64 mean feature of each class (NaN row for a class without images)."""
        c, d = len(self.class_names), self.features.shape[1]
        sums = np.zeros((c, d), dtype=np.float64)
        np.add.at(sums, self.labels, self.features.astype(np.float64))
        counts = np.bincount(self.labels, minlength=c).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts[:, None]

    def class_index(self) -> dict[str, int]:
        """class name -> label."""
        return {str(c): i for i, c in enumerate(self.class_names)}

    def select_classes(self, names: list[str] | np.ndarray) -> np.ndarray:
        """Row indices of the images whose class is in `names` (sorted row order)."""
        idx = self.class_index()
        missing = [n for n in names if n not in idx]
        if missing:
            raise OodmlError(f"classes not in the features file: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        wanted = np.zeros(len(self.class_names), dtype=bool)
        wanted[[idx[n] for n in names]] = True
        return np.flatnonzero(wanted[self.labels])

    def save(self, path: str | Path) -> Path:
        """Write the `.npz` (uncompressed; no pickled objects). `meta['feature_hash']` is filled in."""
        fs = self.sorted()
        meta = dict(fs.meta)
        meta["feature_hash"] = fs.hash
        meta.setdefault("oodml_version", _version())
        arrays: dict[str, np.ndarray] = dict(
            features=fs.features, labels=fs.labels, class_names=fs.class_names, paths=fs.paths,
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )
        if fs.class_split is not None:
            arrays["class_split"] = fs.class_split
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(p, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        self.meta = meta
        return p

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read and validate a features file; OodmlError (exit 2) when missing or corrupt."""
        p = Path(path)
        if not p.is_file():
            raise OodmlError(f"features file {str(p)!r} does not exist; create it with `oodml embed DATASET --out FILE`")
        check_npz(p, "features file")
        try:
            with np.load(p, allow_pickle=False) as z:
                missing = [k for k in REQUIRED_KEYS if k not in z.files]
                if missing:
                    raise OodmlError(f"features file {str(p)!r} lacks keys {missing} (docs/formats.md)")
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise OodmlError(f"features file {str(p)!r} is corrupt or not an .npz: {e}") from None
        kinds = {"features": "fiu", "labels": "iu", "class_names": "U", "paths": "U", "meta": "U"}
        wrong = [k for k, ok in kinds.items() if data[k].dtype.kind not in ok]
        if wrong:
            raise OodmlError(f"features file {str(p)!r}: `{wrong[0]}` has dtype {data[wrong[0]].dtype}, not the "
                             "one docs/formats.md describes; re-create it with `oodml embed`")
        try:
            meta = json.loads(str(data["meta"]))
        except (json.JSONDecodeError, RecursionError):
            raise OodmlError(f"features file {str(p)!r} has a `meta` that is not JSON") from None
        if not isinstance(meta, dict):
            raise OodmlError(f"features file {str(p)!r} has a `meta` that is a JSON {type(meta).__name__}, not an "
                             "object (docs/formats.md)")
        if meta.get("dataset") not in (None, ""):
            check_name(meta["dataset"], f"features file {str(p)!r}: meta.dataset")
        try:
            return cls(data["features"], data["labels"], data["class_names"], data["paths"], meta,
                       data.get("class_split"))
        except OodmlError as e:
            raise OodmlError(f"{str(p)!r}: {e}") from None


def check_npz(path: Path, what: str) -> None:
    """Refuse, before numpy allocates anything, a file that is not a zip of arrays (e.g. a plain `.npy` renamed) and
    a member whose `.npy` header claims more bytes than the member holds (a planted header claiming terabytes)."""
    if not zipfile.is_zipfile(path):
        raise OodmlError(f"{what} {str(path)!r} is not an .npz (a zip of .npy arrays); re-create it with `oodml embed`")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f, max_header_size=1 << 16)
                    header = f.tell()
                need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if need > info.file_size - header:
                    raise OodmlError(f"{what} {str(path)!r}: array {info.filename!r} claims shape {tuple(shape)} "
                                     f"({need:,} bytes) but holds {info.file_size - header:,} bytes; the file is "
                                     "damaged or forged: re-create it with `oodml embed`")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise OodmlError(f"{what} {str(path)!r} is corrupt or not an .npz: {e}") from None


def _version() -> str:
    from oodml import __version__

    return __version__
