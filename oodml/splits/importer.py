"""`oodml import-splits`: convert a published ooDML split pickle into a split file (docs/formats.md) without running its code.

The pickles (`datasplits/*_splits.pkl` of the ooDML repository) map a split id to a dict with `train`, `test`, `fid`,
`split_train`, `split_val` and `test_episodes` (shots -> episode -> test class -> support image file names). Their
leaves are numpy scalars, so they are read with an unpickler that admits only `numpy.dtype` (of plain string, number
and bool kinds) and the numpy scalar constructor; any other global (a `__reduce__` payload, say) is refused with an
`OodmlError` before anything runs.

Image ids. The pickle names support images by file basename inside `images/<class>/`. They become image ids of the
dataset's own layout, per dataset (`ID_RESOLVERS`):

- cars196: the ids of the official archives, `cars_train/NNNNN.jpg` or `cars_test/NNNNN.jpg`, resolved with the devkit
  annotations (`cars_train_annos.mat`, `cars_test_annos_withlabels.mat`): a plain `NNNNN.jpg` is the class's train
  image with that number when there is one, else its test image; `NNNNN_2.jpg` is the test image whose number collides
  with a train image of the same class (the copy order train-then-test). Without the annotation files the ids stay
  `<class>/<basename>` and the split file says so (`extra.episode_ids`).
- cub200: `images/<class>/<basename>` (CUB_200_2011 layout).
- others: `<class>/<basename>`.

The FIDs are kept as published (ResNet-50 features in the ooDML paper); `backbone` records that.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from oodml.errors import OodmlError, check_bounded
from oodml.progress import log
from oodml.splits.spec import Level, SplitSpec

#: the backbone whose features the published ooDML FIDs were computed with
OODML_BACKBONE = "resnet50"  # a registered backbone name; `fid_backbone` in the file says the FIDs are the published ones
_SAFE_DTYPE_KINDS = set("USfiub")


def _scalar() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[attr-defined,no-redef]
    return scalar  # type: ignore[no-any-return]


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """`numpy.dtype` restricted to plain string, number and bool kinds (no object dtype)."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype from {type(spec).__name__} is not allowed")
    dt = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dt.kind not in _SAFE_DTYPE_KINDS:
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not allowed")
    return dt


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy scalar types; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """Admit `numpy.dtype` (plain kinds) and the numpy scalar constructor only."""
        if (module, name) == ("numpy", "dtype"):
            return _safe_dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _scalar()
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


#: largest pickle read (the published ooDML split pickles are a few MB)
MAX_PICKLE_BYTES = 256 << 20


def safe_load(data: bytes) -> Any:
    """Unpickle `data` admitting only numpy scalars and builtin containers; OodmlError otherwise, also when the
    result nests too deep or its shared references expand far beyond the size of `data` (an alias bomb)."""
    try:
        obj = SafeUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, RecursionError, MemoryError) as e:
        raise OodmlError(f"refusing to load the pickle: {type(e).__name__}: {str(e)[:100]}; only ooDML split "
                         "pickles (numpy scalars) are accepted") from None
    check_bounded(obj, "the pickle", max_nodes=100_000 + 4 * len(data))
    return obj


def _plain(x: Any) -> Any:
    """numpy scalars -> Python scalars, recursively."""
    if isinstance(x, dict):
        return {_plain(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---- image ids --------------------------------------------------------------------------------------------------

_CARS_NAME = re.compile(r"^(\d{5})(_2)?\.jpg$")
_CARS_FILES = ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos_withlabels.mat")


def find_cars_annotations(candidates: list[Path]) -> Path | None:
    """The first folder among `candidates` that holds the CARS196 devkit annotations (at its top or in `devkit/`)."""
    for c in candidates:
        if all(_cars_file(c, f) is not None for f in _CARS_FILES):
            return c
    return None


def _cars_file(root: Path, name: str) -> Path | None:
    for p in (root / name, root / "devkit" / name):
        if p.is_file():
            return p
    return None


def _cars_tables(root: Path) -> tuple[list[str], dict[tuple[str, str], set[str]]]:
    """(class names in id order with '/' -> '-', {(class, 5-digit number): {'train', 'test'}})."""
    from scipy.io import loadmat

    meta = loadmat(_cars_file(root, "cars_meta.mat"))["class_names"][0]
    names = [str(n[0]).replace("/", "-") for n in meta]
    table: dict[tuple[str, str], set[str]] = {}
    for part, fname in (("train", "cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        ann = loadmat(_cars_file(root, fname))["annotations"][0]
        for a in ann:
            number = str(a["fname"][0])[:5]
            table.setdefault((names[int(a["class"][0, 0]) - 1], number), set()).add(part)
    return names, table


class CarsIds:
    """Maps ooDML CARS196 support names to official archive ids (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.names, self.table = _cars_tables(root)

    def __call__(self, cls: str, basename: str) -> str:
        """`cars_train/NNNNN.jpg` or `cars_test/NNNNN.jpg` for a support image of class `cls`."""
        m = _CARS_NAME.match(basename)
        parts = self.table.get((cls, m.group(1)), set()) if m else set()
        if m and m.group(2):
            if parts != {"train", "test"}:
                raise OodmlError(f"CARS196 support image {cls}/{basename} has no train/test number collision; "
                                 "the annotation files do not match the pickle")
            return f"cars_test/{m.group(1)}.jpg"
        if not parts:
            raise OodmlError(f"CARS196 support image {cls}/{basename} is not an image of that class in the "
                             "annotation files; check that they are the official devkit files")
        return f"cars_{'train' if 'train' in parts else 'test'}/{basename}"


def _cub_train(classes: list[str]) -> set[str]:
    """CUB-200-2011's usual split: classes 001..100 train."""
    return {c for c in classes if c[:3].isdigit() and int(c[:3]) <= 100}


#: dataset -> its usual train classes, from the class names alone (CARS196 needs the annotations: ids 1..98)
CONVENTIONAL_TRAIN: dict[str, Callable[[list[str]], set[str]]] = {"cub200": _cub_train}


def conventional_train(dataset: str, classes: list[str], resolve: Callable[[str, str], str]) -> set[str] | None:
    """The dataset's usual train classes, or None when they can't be known here."""
    if isinstance(resolve, CarsIds):
        return set(resolve.names[:98])
    rule = CONVENTIONAL_TRAIN.get(dataset)
    return rule(classes) if rule else None


def _annotation_candidates(pickle_file: Path, annotations: Path | None) -> list[Path]:
    out = [annotations] if annotations else []
    data = os.environ.get("OODML_DATA")
    if data:
        out += [Path(data) / "cars196", Path(data) / "cars196_annotations"]
    out += [Path.home() / ".cache" / "oodml" / "data" / "cars196", pickle_file.resolve().parent,
            pickle_file.resolve().parent.parent / "cars196_annotations"]
    return out


def _resolver(dataset: str, pickle_file: Path, annotations: Path | None) -> tuple[Callable[[str, str], str], str]:
    """(class, basename) -> image id for `dataset`, and a one-line description for the split file."""
    if dataset == "cars196":
        root = find_cars_annotations(_annotation_candidates(pickle_file, annotations))
        if root is not None:
            return CarsIds(root), ("official archive ids cars_train/NNNNN.jpg, cars_test/NNNNN.jpg (devkit "
                                   "annotations; plain name = the train image if the class has one, NNNNN_2.jpg = "
                                   "the test image)")
        log("import-splits: CARS196 devkit annotations not found; episode ids stay <class>/<file name>")
    if dataset == "cub200":
        return (lambda c, b: f"images/{c}/{b}"), "images/<class>/<file name> (CUB_200_2011 layout)"
    return (lambda c, b: f"{c}/{b}"), "<class>/<file name> as in the pickle (not resolved to dataset image ids)"


# ---- conversion -------------------------------------------------------------------------------------------------

def _as_split_dict(obj: Any, path: Path) -> dict[int, dict[str, Any]]:
    """The pickle's splits, each checked for the types the conversion relies on; OodmlError naming the first bad
    value otherwise."""
    bad = f"{str(path)!r} is not an ooDML split pickle"
    if not isinstance(obj, dict) or not obj:
        raise OodmlError(f"{bad}: expected a dict of split id -> split")
    need = {"train", "test", "fid"}
    for sid, split in obj.items():
        if not isinstance(sid, int) or isinstance(sid, bool) or not isinstance(split, dict) or not need <= set(split):
            raise OodmlError(f"{bad}: split {str(sid)[:20]!r} lacks keys {sorted(need)}")
        where = f"{bad}: split {sid}"
        for key in ("train", "test", "split_val"):
            if key in split and not _is_names(split[key]):
                raise OodmlError(f"{where}: `{key}` must be a list of class names, got {type(split[key]).__name__}")
            _not_paths(split.get(key, ()), f"{where}: `{key}`")
        fid = split["fid"]
        if isinstance(fid, bool) or not isinstance(fid, (int, float)) or not math.isfinite(fid):
            raise OodmlError(f"{where}: `fid` must be a finite number, got {str(fid)[:30]!r}")
        episodes = split.get("test_episodes", {})
        if not isinstance(episodes, dict):
            raise OodmlError(f"{where}: `test_episodes` must map shots to episodes, got {type(episodes).__name__}")
        for shots in episodes:
            if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
                raise OodmlError(f"{where}: `test_episodes` key {str(shots)[:20]!r} is not a number of shots >= 1")
        _check_episodes(episodes, where)
    return obj


def _is_names(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _check_episodes(episodes: dict[int, Any], where: str) -> None:
    """Episodes given per class must list file names (other shapes are skipped with a note by `convert_splits`)."""
    for shots, eps in episodes.items():
        if not isinstance(eps, dict) or not all(isinstance(e, dict) for e in eps.values()):
            continue
        for e, episode in eps.items():
            if not all(isinstance(c, str) and _is_names(files) for c, files in episode.items()):
                raise OodmlError(f"{where}: episode {str(e)[:20]!r} at {shots} shots must map class names to lists "
                                 "of file names")
            _not_paths(episode, f"{where}: episode {str(e)[:20]!r} class")
            for files in episode.values():
                _not_paths(files, f"{where}: episode {str(e)[:20]!r} file")


def _not_paths(names: Any, what: str) -> None:
    """Class names and file names from a pickle become parts of image ids: no path separators, NUL or control
    characters, no `.`/`..` and no leading `.` (`../../../etc/passwd` is refused, `AM General Hummer SUV 2000` is
    fine)."""
    for name in names:
        if (not name or name.startswith(".") or any(ch in name for ch in "/\\\0") or ".." in name
                or not name.isprintable()):
            raise OodmlError(f"{what} {str(name)[:60]!r} looks like a path, not a name; an ooDML split pickle names "
                             "classes and image files without folders")


def convert_splits(raw: dict[int, dict[str, Any]], *,
                   resolve: Callable[[str, str], str]) -> tuple[list[Level], list[int], list[str]]:
    """Turn the pickle's splits into Levels ordered by FID.

    Returns:
        (levels, pickle split id per level, notes about anything not carried over).
    """
    notes: list[str] = []
    all_classes = sorted({str(c) for s in raw.values() for c in list(s["train"]) + list(s["test"])})
    order = sorted(raw, key=lambda sid: (float(raw[sid]["fid"]), sid))
    levels: list[Level] = []
    for number, sid in enumerate(order, start=1):
        s = raw[sid]
        train, test = sorted(str(c) for c in s["train"]), sorted(str(c) for c in s["test"])
        val = sorted(str(c) for c in s.get("split_val", []))
        episodes: dict[str, list[dict[str, list[str]]]] = {}
        for shots, eps in sorted(dict(s.get("test_episodes", {})).items()):
            if not isinstance(eps, dict) or not all(isinstance(e, dict) for e in eps.values()):
                notes.append(f"split {sid} shots {shots}: episodes are not per-class support lists; not imported")
                continue
            episodes[str(int(shots))] = [
                {str(c): [resolve(str(c), str(f)) for f in files] for c, files in sorted(eps[e].items())}
                for e in sorted(eps)
            ]
        levels.append(Level(level=number, fid=float(s["fid"]), train_classes=train, test_classes=test,
                            val_classes=val, removed_classes=sorted(set(all_classes) - set(train) - set(test)),
                            episodes=episodes))
    return levels, order, notes


def import_splits_command(*, pickle_file: str | Path, dataset: str, out: str | Path | None = None,
                          annotations: str | Path | None = None) -> Path:
    """`oodml import-splits`: read an ooDML pickle safely, write `splits/<dataset>_oodml.json` (or `out`) and its
    plot beside it.

    Args:
        pickle_file: the `*_splits.pkl` file.
        dataset: registered dataset it belongs to (cub200, cars196, sop).
        out: split file to write.
        annotations: CARS196 only: folder with the devkit `.mat` files (else searched under $OODML_DATA, the cache
            and beside the pickle).

    Returns:
        The written split file.
    """
    from oodml.data import DATASETS

    dataset = DATASETS.resolve(dataset)  # a registered name (it names the output file); a typo gets suggestions
    path = Path(pickle_file)
    if not path.is_file():
        raise OodmlError(f"pickle {str(path)!r} does not exist; pass the path of an ooDML *_splits.pkl file")
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise OodmlError(f"pickle {str(path)!r} is {path.stat().st_size:,} bytes; an ooDML split pickle is a few MB "
                         f"(at most {MAX_PICKLE_BYTES:,} are read)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    raw = _as_split_dict(_plain(safe_load(data)), path)
    resolve, how = _resolver(dataset, path, Path(annotations) if annotations else None)
    levels, sids, notes = convert_splits(raw, resolve=resolve)
    classes = sorted(set(levels[0].train_classes) | set(levels[0].test_classes) | set(levels[0].removed_classes))
    conventional = conventional_train(dataset, classes, resolve)
    for lv in levels:
        lv.conventional = conventional is not None and set(lv.train_classes) == conventional
    extra: dict[str, Any] = {
        "classes_from": {"pickle": path.name, "n_classes": len(classes)},
        "episode_ids": how,
        "fid_backbone": "ResNet-50 features, as published by ooDML (not recomputed)",
        "pickle_split_ids": sids,
    }
    if notes:
        extra["import_notes"] = notes
    spec = SplitSpec(dataset=dataset, backbone=OODML_BACKBONE, feature_hash="", seed=0, source=f"ooDML pickle {digest}",
                     levels=levels, extra=extra)
    target = Path(out) if out is not None else Path("splits") / f"{dataset}_oodml.json"
    spec.save(target)
    from oodml.splits.generate import plot_ladder

    plot_ladder(spec, target.with_suffix(".png"))
    log(f"import-splits: {len(levels)} levels, FID {levels[0].fid:.4f} .. {levels[-1].fid:.4f} -> {target} (+ .png)")
    return target
